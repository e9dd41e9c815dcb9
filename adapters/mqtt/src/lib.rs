//! MQTT listeners.
