//! rumqttc (an independent MQTT implementation) driven synchronously for tests.
//!
//! Each connection's event loop runs on its own thread that forwards every incoming packet to a
//! channel and stops at the first error instead of reconnecting, so a test sees exactly one
//! network connection per client and can wait for "the next PUBLISH" with a timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::raw::WAIT;

/// Incoming packets of one connection, with the ones a waiter skipped kept for later waiters.
pub struct Inbox<P> {
    events: Receiver<Result<P, String>>,
    pending: VecDeque<P>,
    /// The error that ended the connection, once seen.
    pub closed: Option<String>,
}

impl<P: std::fmt::Debug> Inbox<P> {
    /// The first packet (pending ones first) for which `pick` is true, within `timeout`.
    /// Packets that do not match stay queued in order.
    pub fn wait(&mut self, timeout: Duration, mut pick: impl FnMut(&P) -> bool) -> Option<P> {
        if let Some(i) = self.pending.iter().position(&mut pick) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(p)) if pick(&p) => return Some(p),
                Ok(Ok(p)) => self.pending.push_back(p),
                Ok(Err(e)) => {
                    self.closed = Some(e);
                    return None;
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits until the connection ends; returns its error text, or `None` on timeout.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(p)) => self.pending.push_back(p),
                Ok(Err(e)) => self.closed = Some(e),
                Err(RecvTimeoutError::Disconnected) => self.closed = Some("channel closed".into()),
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
        self.closed.clone()
    }
}

/// Runs `run` on its own thread with the sending half of a fresh channel.
fn pump<P: Send + 'static>(
    run: impl FnOnce(mpsc::Sender<Result<P, String>>) + Send + 'static,
) -> Receiver<Result<P, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || run(tx));
    rx
}

/// An MQTT 3.1.1 connection made with rumqttc.
pub struct V4 {
    pub client: rumqttc::Client,
    pub inbox: Inbox<rumqttc::Packet>,
    pub connack: rumqttc::ConnAck,
}

/// Default 3.1.1 options for a test client: clean session, 30 s keep-alive.
pub fn v4_options(addr: SocketAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o
}

impl V4 {
    /// Connects and waits for the CONNACK; `Err` carries rumqttc's error (a refusal, say).
    pub fn try_connect(options: rumqttc::MqttOptions) -> Result<V4, String> {
        let (client, mut connection) = rumqttc::Client::new(options, 256);
        let events = pump(move |tx| {
            for event in connection.iter() {
                let sent = match event {
                    Ok(rumqttc::Event::Incoming(p)) => tx.send(Ok(p)).is_ok(),
                    Ok(rumqttc::Event::Outgoing(_)) => true,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        false
                    }
                };
                if !sent {
                    break;
                }
            }
        });
        let mut inbox = Inbox {
            events,
            pending: VecDeque::new(),
            closed: None,
        };
        match inbox.wait(WAIT, |p| matches!(p, rumqttc::Packet::ConnAck(_))) {
            Some(rumqttc::Packet::ConnAck(connack)) => Ok(V4 {
                client,
                inbox,
                connack,
            }),
            _ => Err(inbox
                .closed
                .unwrap_or_else(|| "no CONNACK within the timeout".into())),
        }
    }

    pub fn connect(options: rumqttc::MqttOptions) -> V4 {
        V4::try_connect(options).unwrap_or_else(|e| panic!("v4 connect failed: {e}"))
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .unwrap_or_else(|e| panic!("subscribe {filter}: {e}"));
        match self
            .inbox
            .wait(WAIT, |p| matches!(p, rumqttc::Packet::SubAck(_)))
        {
            Some(rumqttc::Packet::SubAck(ack)) => ack.return_codes,
            other => panic!("no SUBACK for {filter}: {other:?} {:?}", self.inbox.closed),
        }
    }

    /// Publishes; for QoS 1/2 waits for the PUBACK / PUBCOMP so the hub owns the message.
    pub fn publish(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .unwrap_or_else(|e| panic!("publish {topic}: {e}"));
        let done = |p: &rumqttc::Packet| match qos {
            rumqttc::QoS::AtMostOnce => true,
            rumqttc::QoS::AtLeastOnce => matches!(p, rumqttc::Packet::PubAck(_)),
            rumqttc::QoS::ExactlyOnce => matches!(p, rumqttc::Packet::PubComp(_)),
        };
        if qos != rumqttc::QoS::AtMostOnce {
            let acked = self.inbox.wait(WAIT, done);
            assert!(
                acked.is_some(),
                "publish {topic} not acknowledged: {:?}",
                self.inbox.closed
            );
        }
    }

    /// The next PUBLISH, or a test failure after [`WAIT`].
    pub fn expect_publish(&mut self) -> rumqttc::Publish {
        match self
            .inbox
            .wait(WAIT, |p| matches!(p, rumqttc::Packet::Publish(_)))
        {
            Some(rumqttc::Packet::Publish(p)) => p,
            other => panic!(
                "expected a PUBLISH, got {other:?} (closed: {:?})",
                self.inbox.closed
            ),
        }
    }

    /// Asserts that no PUBLISH arrives within `quiet`.
    pub fn expect_no_publish(&mut self, quiet: Duration) {
        if let Some(p) = self
            .inbox
            .wait(quiet, |p| matches!(p, rumqttc::Packet::Publish(_)))
        {
            panic!("expected no PUBLISH, got {p:?}");
        }
    }

    /// Sends DISCONNECT and waits for the connection to end.
    pub fn disconnect(mut self) {
        self.client.disconnect().ok();
        self.inbox.wait_closed(WAIT);
    }
}

/// An MQTT 5 connection made with rumqttc.
pub struct V5 {
    pub client: rumqttc::v5::Client,
    pub inbox: Inbox<rumqttc::v5::mqttbytes::v5::Packet>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
}

/// Default MQTT 5 options: clean start, 30 s keep-alive, no session expiry.
pub fn v5_options(addr: SocketAddr, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(true);
    o
}

use rumqttc::v5::mqttbytes::v5::Packet as P5;

impl V5 {
    pub fn try_connect(options: rumqttc::v5::MqttOptions) -> Result<V5, String> {
        let (client, mut connection) = rumqttc::v5::Client::new(options, 256);
        let events = pump(move |tx| {
            for event in connection.iter() {
                let sent = match event {
                    Ok(rumqttc::v5::Event::Incoming(p)) => tx.send(Ok(p)).is_ok(),
                    Ok(rumqttc::v5::Event::Outgoing(_)) => true,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        false
                    }
                };
                if !sent {
                    break;
                }
            }
        });
        let mut inbox = Inbox {
            events,
            pending: VecDeque::new(),
            closed: None,
        };
        match inbox.wait(WAIT, |p| matches!(p, P5::ConnAck(_))) {
            Some(P5::ConnAck(connack)) => Ok(V5 {
                client,
                inbox,
                connack,
            }),
            _ => Err(inbox
                .closed
                .unwrap_or_else(|| "no CONNACK within the timeout".into())),
        }
    }

    pub fn connect(options: rumqttc::v5::MqttOptions) -> V5 {
        V5::try_connect(options).unwrap_or_else(|e| panic!("v5 connect failed: {e}"))
    }

    /// Subscribes one filter (with options and optional properties) and waits for the SUBACK.
    pub fn subscribe_filter(
        &mut self,
        filter: rumqttc::v5::mqttbytes::v5::Filter,
        props: Option<rumqttc::v5::mqttbytes::v5::SubscribeProperties>,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        let name = filter.path.clone();
        let r = match props {
            Some(p) => self.client.subscribe_many_with_properties([filter], p),
            None => self.client.subscribe_many([filter]),
        };
        r.unwrap_or_else(|e| panic!("subscribe {name}: {e}"));
        match self.inbox.wait(WAIT, |p| matches!(p, P5::SubAck(_))) {
            Some(P5::SubAck(ack)) => ack.return_codes,
            other => panic!("no SUBACK for {name}: {other:?} {:?}", self.inbox.closed),
        }
    }

    pub fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.subscribe_filter(rumqttc::v5::mqttbytes::v5::Filter::new(filter, qos), None)
    }

    /// Publishes with properties; for QoS 1/2 waits for the PUBACK / PUBCOMP.
    pub fn publish_with(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
        props: Option<rumqttc::v5::mqttbytes::v5::PublishProperties>,
    ) {
        let r = match props {
            Some(p) => self
                .client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), p),
            None => self.client.publish(topic, qos, retain, payload.to_vec()),
        };
        r.unwrap_or_else(|e| panic!("publish {topic}: {e}"));
        use rumqttc::v5::mqttbytes::QoS;
        if qos != QoS::AtMostOnce {
            let acked = self.inbox.wait(WAIT, |p| match qos {
                QoS::AtLeastOnce => matches!(p, P5::PubAck(_)),
                _ => matches!(p, P5::PubComp(_)),
            });
            assert!(
                acked.is_some(),
                "publish {topic} not acknowledged: {:?}",
                self.inbox.closed
            );
        }
    }

    pub fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
    ) {
        self.publish_with(topic, qos, retain, payload, None);
    }

    pub fn expect_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        match self.inbox.wait(WAIT, |p| matches!(p, P5::Publish(_))) {
            Some(P5::Publish(p)) => p,
            other => panic!(
                "expected a PUBLISH, got {other:?} (closed: {:?})",
                self.inbox.closed
            ),
        }
    }

    pub fn expect_no_publish(&mut self, quiet: Duration) {
        if let Some(p) = self.inbox.wait(quiet, |p| matches!(p, P5::Publish(_))) {
            panic!("expected no PUBLISH, got {p:?}");
        }
    }

    /// The DISCONNECT the hub sends, or a test failure after [`WAIT`].
    pub fn expect_disconnect(&mut self) -> rumqttc::v5::mqttbytes::v5::Disconnect {
        match self.inbox.wait(WAIT, |p| matches!(p, P5::Disconnect(_))) {
            Some(P5::Disconnect(d)) => d,
            other => panic!(
                "expected a DISCONNECT, got {other:?} (closed: {:?})",
                self.inbox.closed
            ),
        }
    }

    pub fn disconnect(mut self) {
        self.client.disconnect().ok();
        self.inbox.wait_closed(WAIT);
    }
}
