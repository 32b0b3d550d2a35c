/*
 * A Mosquitto 2.0 plugin: a client's id must be its own login.
 *
 * Mosquitto hands an MQTT client id to whoever connects with it and disconnects the client
 * that held it ("session takeover"), so without this a car could kick an edge node off the
 * broker by connecting with the node's id, and flip the node's retained health with its
 * Last Will. `use_username_as_clientid` would stop that too, but it allows one connection
 * per login, and a car runs several (the offload client, the fleet link, an upload). Here
 * a client id is accepted when it is the username itself or starts with "<username>:"
 * (edgepilot.mqtt.Connection names its connections so); anything else is refused at
 * CONNECT, before a session could be taken over. Usernames may not contain ':' (the
 * project's logins are [A-Za-z0-9._-]), so one login's ids are never a prefix of another's.
 *
 * Load it before the dynamic-security plugin (launch/mosquitto-secure.conf): it only
 * refuses or defers; dynsec then checks the password and the ACLs.
 */
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *plugin_id = NULL;

static int id_belongs_to(const char *id, const char *user)
{
	size_t n = strlen(user);
	if (strncmp(id, user, n) != 0) return 0;
	return id[n] == '\0' || (id[n] == ':' && id[n + 1] != '\0');
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	(void)event;
	(void)userdata;
	if (ed->username == NULL || id == NULL) return MOSQ_ERR_PLUGIN_DEFER; /* anonymous: dynsec refuses */
	if (id_belongs_to(id, ed->username)) return MOSQ_ERR_PLUGIN_DEFER;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "edgepilot_clientid: refused client id '%s' for user '%s'", id,
			     ed->username);
	return MOSQ_ERR_AUTH;
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
	(void)user_data;
	(void)opts;
	(void)opt_count;
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
}
