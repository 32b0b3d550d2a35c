/*
 * A Mosquitto 2.0 plugin: a per-login publish rate limit, in messages/s and bytes/s.
 *
 * Why: an edge node protects its queue (edge_node/fairq.py), not its connection. One car
 * sending more than the node's network thread can read (600 large frames/s, 40 MB/s) held
 * the other cars' requests in the broker-to-node TCP stream, 18x their round trip
 * (docs/benchmarks.md, "The edge under a flood"). Only the broker sees a publisher before
 * its bytes are queued to the node, and Mosquitto 2.0 has no rate limit of its own.
 *
 * How: MOSQ_EVT_MESSAGE runs for every PUBLISH a client sends, after the ACL check and
 * before the message is stored or queued to any subscriber (src/handle_publish.c). Each key
 * has two token buckets (messages, bytes), refilled continuously at the configured rate up
 * to rate * burst_s, full when first seen. A message finding either empty is dropped and
 * charges nothing, so a flooder still gets exactly the limit through. The byte bucket may
 * go into debt by one message, so no message size is ever impossible.
 *
 * The key is the username when the client logged in, else its client id. A car runs
 * several connections under one login (offload, fleet link, upload): keyed per connection,
 * a flooder would get N times the limit by opening N of them, per login it cannot (dynsec
 * checks the password, edgepilot_clientid ties the ids to the login). Anonymous clients
 * have only their id, which they choose: that is why the plain loopback broker of the demo
 * and the tests does not load this plugin (launch/mosquitto.conf).
 *
 * Dropping: returning MOSQ_ERR_ACL_DENIED makes Mosquitto 2.0 drop the message: QoS 0
 * silently; QoS 1 with a PUBACK, QoS 2 with a PUBREC, of reason 0x87 "not authorized" to an
 * MQTT v5 client, which so learns it was not accepted (2.0's plugins cannot send 0x97
 * "quota exceeded"). An MQTT 3.x PUBACK has no reason code and would read as accepted, so
 * a 3.x client's QoS 1/2 message over the limit disconnects it instead (any other error
 * does): unacknowledged, the message is the client's to resend. (A QoS 2 message resent
 * after a reconnect counts again: the callback runs before Mosquitto looks it up. Nothing
 * in edgepilot publishes at QoS 2.)
 *
 * Options (plugin_opt_<name>; 0 turns a limit off):
 *   max_msgs_per_s 100     a car sends 20-30 frames/s, telemetry 1/s, a model status rarely
 *   max_bytes_per_s 8388608  30 frames/s at the largest body an edge node accepts (256 KiB)
 *   burst_s 2
 *   exempt_users, exempt_users_file  keys never limited, separated by spaces or newlines:
 *     edge nodes and the cloud, whose replies and pushes grow with the fleet
 *   exempt_topics  filters never counted: uploads, paced by the cloud's acks, at link speed
 * Drops are logged (notice) at most once a second per key, with counts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define SLOTS 256
#define MAX_WORDS 256

struct bucket {
	struct bucket *next;
	double msgs, bytes;   /* tokens left */
	double t;             /* when refilled last, monotonic seconds */
	double logged;        /* when its drops were logged last */
	unsigned long drop_n, drop_b; /* dropped since that line: messages, bytes */
	int exempt;
	char key[];
};

struct list {
	char *w[MAX_WORDS];
	int n;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static double max_msgs, max_bytes, burst_s; /* set in mosquitto_plugin_init */
static struct list users, topics;
static char *texts[16]; /* the option strings the words point into */
static int n_texts;
static struct bucket *slots[SLOTS];
static unsigned long dropped_all;
static double last_sweep;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int listed(const struct list *l, const char *word)
{
	for (int i = 0; i < l->n; i++) {
		if (!strcmp(l->w[i], word)) return 1;
	}
	return 0;
}

static int topic_exempt(const char *topic)
{
	bool match;
	for (int i = 0; i < topics.n; i++) {
		if (mosquitto_topic_matches_sub(topics.w[i], topic, &match) == MOSQ_ERR_SUCCESS && match) return 1;
	}
	return 0;
}

/* The bucket of a key, made (full) on first sight; NULL when out of memory. */
static struct bucket *find(const char *key, double now)
{
	unsigned h = 2166136261u; /* FNV-1a */
	for (const char *p = key; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
	struct bucket **slot = &slots[h % SLOTS];
	for (struct bucket *b = *slot; b; b = b->next) {
		if (!strcmp(b->key, key)) return b;
	}
	struct bucket *b = calloc(1, sizeof(*b) + strlen(key) + 1);
	if (b == NULL) return NULL;
	strcpy(b->key, key);
	b->msgs = max_msgs * burst_s;
	b->bytes = max_bytes * burst_s;
	b->t = now;
	b->logged = -INFINITY; /* the first drop is logged at once */
	b->exempt = listed(&users, key);
	b->next = *slot;
	*slot = b;
	return b;
}

static void refill(struct bucket *b, double now)
{
	double dt = now - b->t;
	b->msgs = fmin(max_msgs * burst_s, b->msgs + dt * max_msgs);
	b->bytes = fmin(max_bytes * burst_s, b->bytes + dt * max_bytes);
	b->t = now;
}

static void report(struct bucket *b, double now)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			     "edgepilot_ratelimit: '%s' over its limit (%g messages/s, %.0f bytes/s, burst %g s): "
			     "dropped %lu messages (%lu bytes) since its last report; %lu from all clients in all",
			     b->key, max_msgs, max_bytes, burst_s, b->drop_n, b->drop_b, dropped_all);
	b->drop_n = b->drop_b = 0;
	b->logged = now;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *key = mosquitto_client_username(ed->client);
	double now = now_s();
	(void)event;
	(void)userdata;
	if (key == NULL) key = mosquitto_client_id(ed->client);
	if (key == NULL || topic_exempt(ed->topic)) return MOSQ_ERR_SUCCESS;
	struct bucket *b = find(key, now);
	if (b == NULL || b->exempt) return MOSQ_ERR_SUCCESS; /* out of memory: let it through */
	refill(b, now);
	if ((max_msgs <= 0 || b->msgs >= 1) && (max_bytes <= 0 || b->bytes >= 0)) {
		if (max_msgs > 0) b->msgs -= 1;
		if (max_bytes > 0) b->bytes -= ed->payloadlen;
		return MOSQ_ERR_SUCCESS;
	}
	b->drop_n++;
	b->drop_b += ed->payloadlen;
	dropped_all++;
	if (now - b->logged >= 1) report(b, now);
	if (ed->qos > 0 && mosquitto_client_protocol_version(ed->client) < 5) return MOSQ_ERR_ADMINISTRATIVE_ACTION;
	return MOSQ_ERR_ACL_DENIED;
}

/* Once a second: log drops not yet reported; forget keys whose buckets are full again (the
 * same as new ones; not logged in the last second, or a new one's first drop would log
 * again), so that the table holds only the clients of the last seconds. */
static int on_tick(int event, void *event_data, void *userdata)
{
	double now = now_s();
	(void)event;
	(void)event_data;
	(void)userdata;
	if (now - last_sweep < 1) return MOSQ_ERR_SUCCESS;
	last_sweep = now;
	for (int i = 0; i < SLOTS; i++) {
		for (struct bucket **p = &slots[i], *b; (b = *p) != NULL;) {
			if (b->drop_n && now - b->logged >= 1) report(b, now);
			refill(b, now);
			if (!b->exempt && !b->drop_n && now - b->logged >= 1 && b->msgs >= max_msgs * burst_s &&
			    b->bytes >= max_bytes * burst_s) {
				*p = b->next;
				free(b);
			} else {
				p = &b->next;
			}
		}
	}
	return MOSQ_ERR_SUCCESS;
}

/* Words of `text` (separated by spaces, commas or newlines) into `l`; keeps `text`. */
static int add_words(struct list *l, char *text)
{
	char *save = NULL;
	if (text == NULL || n_texts == (int)(sizeof(texts) / sizeof(texts[0]))) return MOSQ_ERR_NOMEM;
	texts[n_texts++] = text;
	for (char *w = strtok_r(text, " ,\t\r\n", &save); w; w = strtok_r(NULL, " ,\t\r\n", &save)) {
		if (l->n == MAX_WORDS) return MOSQ_ERR_INVAL;
		l->w[l->n++] = w;
	}
	return MOSQ_ERR_SUCCESS;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *text = NULL;
	long n;
	if (f == NULL) return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (text = malloc((size_t)n + 1)) != NULL) {
		text[fread(text, 1, (size_t)n, f)] = '\0';
	}
	fclose(f);
	return text;
}

static int number(const char *value, double *out)
{
	char *end;
	double x = strtod(value, &end);
	if (end == value || *end != '\0' || !isfinite(x) || x < 0) return MOSQ_ERR_INVAL;
	*out = x;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data,
			  struct mosquitto_opt *opts, int opt_count)
{
	int rc = MOSQ_ERR_SUCCESS;
	(void)user_data;
	plugin_id = identifier;
	max_msgs = 100, max_bytes = 8 * 1024 * 1024, burst_s = 2; /* the defaults */
	for (int i = 0; i < opt_count && rc == MOSQ_ERR_SUCCESS; i++) {
		const char *k = opts[i].key, *v = opts[i].value;
		if (!strcmp(k, "max_msgs_per_s")) rc = number(v, &max_msgs);
		else if (!strcmp(k, "max_bytes_per_s")) rc = number(v, &max_bytes);
		else if (!strcmp(k, "burst_s")) rc = number(v, &burst_s) ? MOSQ_ERR_INVAL : burst_s > 0 ? rc : MOSQ_ERR_INVAL;
		else if (!strcmp(k, "exempt_users")) rc = add_words(&users, strdup(v));
		else if (!strcmp(k, "exempt_users_file")) rc = add_words(&users, read_file(v));
		else if (!strcmp(k, "exempt_topics")) rc = add_words(&topics, strdup(v));
		else rc = MOSQ_ERR_INVAL;
		if (rc != MOSQ_ERR_SUCCESS) {
			mosquitto_log_printf(MOSQ_LOG_ERR, "edgepilot_ratelimit: bad or unreadable plugin_opt_%s '%s'", k, v);
		}
	}
	for (int i = 0; i < topics.n && rc == MOSQ_ERR_SUCCESS; i++) {
		if (mosquitto_sub_topic_check(topics.w[i]) != MOSQ_ERR_SUCCESS) {
			mosquitto_log_printf(MOSQ_LOG_ERR, "edgepilot_ratelimit: bad exempt topic filter '%s'", topics.w[i]);
			rc = MOSQ_ERR_INVAL;
		}
	}
	if (rc != MOSQ_ERR_SUCCESS) return rc; /* the broker refuses to start: no silent typo */
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			     "edgepilot_ratelimit: %g messages/s, %.0f bytes/s, burst %g s per login; %d logins and %d "
			     "topic filters exempt",
			     max_msgs, max_bytes, burst_s, users.n, topics.n);
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	return rc ? rc : mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	if (dropped_all) mosquitto_log_printf(MOSQ_LOG_NOTICE, "edgepilot_ratelimit: %lu messages dropped in all", dropped_all);
	for (int i = 0; i < SLOTS; i++) {
		while (slots[i]) {
			struct bucket *b = slots[i];
			slots[i] = b->next;
			free(b);
		}
	}
	for (int i = 0; i < n_texts; i++) free(texts[i]);
	n_texts = users.n = topics.n = 0;
	return MOSQ_ERR_SUCCESS;
}
