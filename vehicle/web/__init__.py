"""The car's web controller: drive, watch and collect from a phone or laptop browser.

``start_web`` (``vehicle.web.controller``) wires it onto a ``DriveLoop``: the server
(``server``, aiohttp on its own thread), the page (``static/``), the checked socket
protocol (``protocol``), the token (``auth``) and the loop's user input (``user``).
"""

from vehicle.web.controller import WebControl, start_web

__all__ = ["WebControl", "start_web"]
