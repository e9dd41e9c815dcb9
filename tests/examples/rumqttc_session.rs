//! One scripted rumqttc session against a broker, for recording the frames rumqttc sends
//! (core/mqtt-codec/tests/fixtures/capture_all.sh runs it behind the recording proxy):
//! `cargo run -p iothub-e2e --example rumqttc_session -- <port> v4|v5`.
//!
//! CONNECT with credentials, keep-alive 20, a will and a persistent session; a SUBSCRIBE at
//! QoS 2; PUBLISH at QoS 0, 1 (retained) and 2 and their deliveries; UNSUBSCRIBE; DISCONNECT.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use iothub_e2e::clients::{V4, V5, v4_options, v5_options};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(version)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: rumqttc_session <port> v4|v5");
        std::process::exit(2);
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("a port number");
    match version.as_str() {
        "v4" => v4(addr),
        "v5" => v5(addr),
        other => panic!("unknown version {other}"),
    }
}

fn v4(addr: SocketAddr) {
    use rumqttc::{LastWill, QoS};
    let base = "iothub-capture/rumq311";
    let mut o = v4_options(addr, "cap-rumqttc311");
    o.set_keep_alive(Duration::from_secs(20));
    o.set_clean_session(false);
    o.set_credentials("rumq-user", "rumq-pass");
    o.set_last_will(LastWill::new(
        format!("{base}/will"),
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let mut c = V4::connect(o);
    c.subscribe(&format!("{base}/#"), QoS::ExactlyOnce);
    c.publish(&format!("{base}/q0"), QoS::AtMostOnce, false, b"zero");
    c.publish(&format!("{base}/retained"), QoS::AtLeastOnce, true, b"one");
    c.publish(&format!("{base}/q2"), QoS::ExactlyOnce, false, b"two");
    for _ in 0..3 {
        c.expect_publish();
    }
    c.client
        .unsubscribe(format!("{base}/#"))
        .expect("unsubscribe");
    c.inbox
        .wait(Duration::from_secs(5), |p| {
            matches!(p, rumqttc::Packet::UnsubAck(_))
        })
        .expect("UNSUBACK");
    c.disconnect();
}

fn v5(addr: SocketAddr) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, Packet, PublishProperties};
    let base = "iothub-capture/rumq5";
    let mut o = v5_options(addr, "cap-rumqttc5");
    o.set_keep_alive(Duration::from_secs(20));
    o.set_clean_start(false);
    o.set_credentials("rumq-user", "rumq-pass");
    o.set_session_expiry_interval(Some(60));
    o.set_last_will(LastWill::new(
        format!("{base}/will"),
        "gone",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let mut c = V5::connect(o);
    let mut filter = Filter::new(format!("{base}/#"), QoS::ExactlyOnce);
    filter.preserve_retain = true;
    c.subscribe_filter(filter, None);
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        message_expiry_interval: Some(30),
        ..PublishProperties::default()
    };
    c.publish_with(
        &format!("{base}/q0"),
        QoS::AtMostOnce,
        false,
        b"zero",
        Some(props),
    );
    c.publish(&format!("{base}/retained"), QoS::AtLeastOnce, true, b"one");
    c.publish(&format!("{base}/q2"), QoS::ExactlyOnce, false, b"two");
    for _ in 0..3 {
        c.expect_publish();
    }
    c.client
        .unsubscribe(format!("{base}/#"))
        .expect("unsubscribe");
    c.inbox
        .wait(Duration::from_secs(5), |p| matches!(p, Packet::UnsubAck(_)))
        .expect("UNSUBACK");
    c.disconnect();
}
