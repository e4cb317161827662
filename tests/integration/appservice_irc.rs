//! A real IRC bridge on Hearth: heisenbridge (PyPI) against ngircd (Debian), both started here.
//! A Matrix user sets the bridge up through its control room, joins an IRC channel, and talks
//! with an IRC user (a raw IRC client here) in both directions.

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

use crate::common::{enc, eventually, TestServer};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's ngircd, installed when missing (as root, like the suite's other system packages).
fn ngircd() -> &'static Path {
    let path = Path::new("/usr/sbin/ngircd");
    if !path.exists() {
        let status = std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "ngircd"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("apt-get runs");
        assert!(status.success() && path.exists(), "cannot install ngircd");
    }
    path
}

/// Starts ngircd on `port` with a configuration in `dir`.
fn start_ngircd(dir: &Path, port: u16) -> Child {
    let conf = dir.join("ngircd.conf");
    std::fs::write(
        &conf,
        format!(
            "[Global]\nName = irc.hearth.test\nInfo = Hearth test IRC server\nListen = 127.0.0.1\n\
             Ports = {port}\nPidFile = {}\nMotdPhrase = \"Hello\"\n\
             [Limits]\nMaxConnectionsIP = 0\nMaxNickLength = 30\n\
             [Options]\nPAM = no\nIdent = no\nDNS = no\nRequireAuthPing = no\n",
            dir.join("ngircd.pid").display()
        ),
    )
    .unwrap();
    Command::new(ngircd())
        .args(["-n", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ngircd starts")
}

/// A raw IRC client.
struct Irc {
    reader: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Irc {
    async fn connect(port: u16, nick: &str) -> Irc {
        let stream = eventually(20, "ngircd listening", || async {
            TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        let (r, w) = stream.into_split();
        let mut irc = Irc {
            reader: BufReader::new(r).lines(),
            writer: w,
        };
        irc.send(&format!("NICK {nick}")).await;
        irc.send(&format!("USER {nick} 0 * :{nick}")).await;
        irc.wait_for(" 001 ").await;
        irc
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads lines (answering pings) until one contains `needle`.
    async fn wait_for(&mut self, needle: &str) -> String {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let line = self
                    .reader
                    .next_line()
                    .await
                    .unwrap()
                    .expect("IRC connection open");
                if let Some(token) = line.strip_prefix("PING ") {
                    self.send(&format!("PONG {token}")).await;
                }
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("IRC never said {needle:?}"))
    }
}

/// Joins every room `token` is invited to; the rooms joined.
async fn accept_invites(server: &TestServer, token: &str, since: &mut String) -> Vec<String> {
    let path = if since.is_empty() {
        "/_matrix/client/v3/sync?timeout=1000".to_owned()
    } else {
        format!("/_matrix/client/v3/sync?timeout=1000&since={since}")
    };
    let (status, sync) = server.get(&path, Some(token)).await;
    assert_eq!(status, 200, "{sync}");
    *since = sync["next_batch"].as_str().unwrap().to_owned();
    let mut joined = Vec::new();
    for room in sync["rooms"]["invite"]
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
    {
        server.join(token, room).await;
        joined.push(room.clone());
    }
    joined
}

/// Waits (up to 30 s) for an invite, joins it; the room.
async fn wait_invite(server: &TestServer, token: &str, since: &mut String, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(room) = accept_invites(server, token, since).await.pop() {
            return room;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}

/// Messages of a room, oldest first.
async fn messages(server: &TestServer, token: &str, room: &str) -> Vec<Value> {
    let (_, page) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(room)
            ),
            Some(token),
        )
        .await;
    let mut events: Vec<Value> = page["chunk"].as_array().cloned().unwrap_or_default();
    events.reverse();
    events
        .into_iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect()
}

async fn said(server: &TestServer, token: &str, room: &str, needle: &str) -> bool {
    messages(server, token, room).await.iter().any(|e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains(needle))
    })
}

/// Sends a command (a plain message) in a bridge room.
async fn say(server: &TestServer, token: &str, room: &str, text: &str) {
    let txn = format!("{}-{}", text.len(), crate::common::enc(text));
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(&txn)
            ),
            Some(token),
            json!({ "msgtype": "m.text", "body": text }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_user_and_an_irc_user_talk_through_heisenbridge() {
    let venv = crate::peers::python_env();
    let dir = tempfile::tempdir().unwrap();
    let irc_port = free_port();
    let _ngircd = start_ngircd(dir.path(), irc_port);

    // The bridge's registration, as the bridge itself generates it.
    let bridge_port = free_port();
    let registration = dir.path().join("heisenbridge.yaml");
    let generated = Command::new(venv.join("bin/heisenbridge"))
        .arg("-c")
        .arg(&registration)
        .args([
            "--generate",
            "-l",
            "127.0.0.1",
            "-p",
            &bridge_port.to_string(),
        ])
        .output()
        .await
        .expect("heisenbridge runs");
    assert!(generated.status.success(), "{generated:?}");
    let reg_file = registration.clone();
    let server = TestServer::start_with(|c| c.appservice.registration_files = vec![reg_file]).await;
    let (alice_id, alice, _) = server.register("alice", "a long password").await;
    let mut bridge = Command::new(venv.join("bin/heisenbridge"))
        .arg("-c")
        .arg(&registration)
        .args([
            "-l",
            "127.0.0.1",
            "-p",
            &bridge_port.to_string(),
            "-o",
            &alice_id,
        ])
        .arg(server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("heisenbridge starts");
    let mut out = BufReader::new(bridge.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = out.next_line().await.unwrap() {
            if line.contains("bridge is now running") {
                return;
            }
        }
        panic!("heisenbridge exited before it was running");
    })
    .await
    .expect("heisenbridge runs within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });

    // The bridge opens a control room for its owner.
    let mut since = String::new();
    let control = wait_invite(&server, &alice, &mut since, "the control room invite").await;
    eventually(30, "the bridge's help in the control room", || async {
        said(&server, &alice, &control, "ADDNETWORK - add new network")
            .await
            .then_some(())
    })
    .await;
    say(&server, &alice, &control, "ADDNETWORK hearthnet").await;
    eventually(30, "the network added", || async {
        said(&server, &alice, &control, "Network added")
            .await
            .then_some(())
    })
    .await;
    say(
        &server,
        &alice,
        &control,
        &format!("ADDSERVER hearthnet 127.0.0.1 {irc_port}"),
    )
    .await;
    eventually(30, "the server added", || async {
        said(&server, &alice, &control, "Server added")
            .await
            .then_some(())
    })
    .await;
    say(&server, &alice, &control, "OPEN hearthnet").await;
    let network = wait_invite(&server, &alice, &mut since, "the network room invite").await;
    // The IRC user is on the channel first.
    let mut bob = Irc::connect(irc_port, "bob").await;
    bob.send("JOIN #hearth").await;
    bob.wait_for("JOIN").await;

    say(&server, &alice, &network, "NICK alicem").await;
    say(&server, &alice, &network, "CONNECT").await;
    eventually(60, "the bridge connected to IRC", || async {
        said(
            &server,
            &alice,
            &network,
            "Welcome to the Internet Relay Network",
        )
        .await
        .then_some(())
    })
    .await;
    say(&server, &alice, &network, "JOIN #hearth").await;
    let channel = wait_invite(&server, &alice, &mut since, "the channel room invite").await;
    bob.wait_for("JOIN :#hearth").await;

    // Matrix → IRC.
    say(&server, &alice, &channel, "hello from Matrix").await;
    let line = bob.wait_for("PRIVMSG #hearth :hello from Matrix").await;
    assert!(line.starts_with(":alicem!"), "{line}");

    // IRC → Matrix: bob's puppet says it in the room.
    bob.send("PRIVMSG #hearth :hello from IRC").await;
    let event = eventually(30, "bob's message in the Matrix room", || async {
        messages(&server, &alice, &channel)
            .await
            .into_iter()
            .find(|e| e["content"]["body"] == "hello from IRC")
    })
    .await;
    let sender = event["sender"].as_str().unwrap();
    assert!(sender.starts_with("@irc_"), "{event}");
    assert!(sender.to_lowercase().contains("bob"), "{event}");
    let _ = bridge.kill().await;
}
