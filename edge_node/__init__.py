"""The roadside inference service: answers hard frames for many cars over MQTT v5."""
