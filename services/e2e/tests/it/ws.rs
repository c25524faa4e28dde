//! WebSocket `/v1/ws`: subscriptions by job id, every terminal snapshot delivered, bad
//! messages answered with an error on a socket that keeps working.

use std::collections::HashSet;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::System;

const WITHIN: Duration = Duration::from_secs(60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(system: &System) -> Socket {
    let url = system.url("/v1/ws").replacen("http://", "ws://", 1);
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket handshake");
    socket
}

/// The next JSON message (pings and pongs skipped).
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WITHIN, socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send(socket: &mut Socket, text: &str) {
    socket
        .send(Message::text(text.to_string()))
        .await
        .expect("send");
}

#[tokio::test]
async fn a_subscriber_to_100_jobs_gets_every_terminal_snapshot() {
    let system = System::start().await;
    let mut ids = Vec::new();
    for i in 0..100 {
        // Some finish before the subscription, most while it is open.
        let payload = json!({"ms": 200 + 10 * i});
        ids.push(
            system.submit("sleep", payload).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    let mut socket = connect(&system).await;
    let unknown = "019aa6d2-5c1e-7b43-9a0e-2f2f8c1d9b11";
    let mut jobs: Vec<&str> = ids.iter().map(String::as_str).collect();
    jobs.push(unknown);
    send(
        &mut socket,
        &json!({"op": "subscribe", "jobs": jobs}).to_string(),
    )
    .await;

    let mut subscribed = None;
    let mut unknown_error = None;
    let mut terminal: HashSet<String> = HashSet::new();
    let mut last_revision = std::collections::HashMap::new();
    while terminal.len() < ids.len() || subscribed.is_none() || unknown_error.is_none() {
        let message = next_json(&mut socket).await;
        match message["type"].as_str() {
            Some("subscribed") => subscribed = Some(message),
            Some("error") => unknown_error = Some(message),
            Some("snapshot") => {
                let id = message["job"]["id"].as_str().expect("id").to_string();
                let revision = message["revision"].as_u64().expect("revision");
                let previous = last_revision.insert(id.clone(), revision);
                assert!(
                    previous.is_none_or(|p| p < revision),
                    "revisions go forward"
                );
                if message["job"]["state"] == "succeeded" {
                    terminal.insert(id);
                }
            }
            _ => panic!("unexpected {message}"),
        }
    }
    let subscribed = subscribed.expect("subscribed");
    assert_eq!(subscribed["jobs"].as_array().expect("jobs").len(), 100);
    let detail = unknown_error.expect("error")["detail"]
        .as_str()
        .expect("detail")
        .to_string();
    assert!(detail.contains(unknown), "{detail}");
    assert_eq!(terminal, ids.iter().cloned().collect::<HashSet<_>>());

    send(
        &mut socket,
        &json!({"op": "unsubscribe", "jobs": [ids[0]]}).to_string(),
    )
    .await;
    let answer = next_json(&mut socket).await;
    assert_eq!(answer["type"], "unsubscribed", "{answer}");
    assert_eq!(answer["jobs"], json!([ids[0]]));
}

#[tokio::test]
async fn a_bad_message_gets_an_error_and_the_socket_keeps_working() {
    let system = System::start().await;
    let mut socket = connect(&system).await;
    for bad in [
        "this is not JSON",
        r#"{"op":"frobnicate"}"#,
        r#"{"op":"subscribe","jobs":["not-a-uuid"]}"#,
        r#"{"op":"subscribe","kinds":["Not A Kind"]}"#,
    ] {
        send(&mut socket, bad).await;
        let answer = next_json(&mut socket).await;
        assert_eq!(answer["type"], "error", "{bad}: {answer}");
        assert!(
            answer["detail"].as_str().is_some_and(|d| d.len() > 10),
            "{answer}"
        );
    }
    socket
        .send(Message::Ping(b"hello".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WITHIN, async {
        loop {
            match socket.next().await.expect("open").expect("message") {
                Message::Pong(data) => return data,
                Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("a pong in time");
    assert_eq!(&pong[..], b"hello");

    // Still working: a kind subscription sees a new job through to its end.
    send(&mut socket, r#"{"op":"subscribe","kinds":["noop"]}"#).await;
    let answer = next_json(&mut socket).await;
    assert_eq!(answer["type"], "subscribed");
    assert_eq!(answer["kinds"], json!(["noop"]));
    let job = system.submit("noop", json!({})).await;
    loop {
        let message = next_json(&mut socket).await;
        assert_eq!(message["type"], "snapshot", "{message}");
        assert_eq!(message["job"]["kind"], "noop");
        if message["job"]["id"] == job["id"] && message["job"]["state"] == "succeeded" {
            break;
        }
    }
}
