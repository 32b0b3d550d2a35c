"""The fleet dashboard: cars, edge nodes, training runs and the model registry in a browser.

``edgepilot dashboard`` (or ``edgepilot cloud --dashboard``) serves one page that follows
the fleet live. What it knows comes from two places only: the broker, where it holds its
own login (role ``dashboard`` in the table of topics: it reads the fleet's topics and may
publish one, ``cloud/models``), and the cloud trainer's store (registry, run reports and
their plots), read-only.

- ``view``: the fleet as the page sees it, merged from MQTT messages, with a change counter
  so each open page is sent only what changed since it last looked;
- ``storeview``: the registry and the runs, read from the store;
- ``bus``: the broker side: subscriptions into the view, and model changes sent as
  ``fleet.ModelChange`` requests to the cloud trainer, which runs them
  (``cloud_trainer.control``);
- ``access``: who may look and who may change (loopback, the operator's token, sessions);
- ``server``: the aiohttp app: the page, a server-sent-event stream, the change API;
- ``static/``: the page, its script, and uPlot (vendored: no CDN at run time).
"""
