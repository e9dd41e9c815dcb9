//! I/O-free MQTT 3.1.1 and 5.0 encoder and decoder.
