"""The cloud link: MQTT session, dialects, downlinks."""
