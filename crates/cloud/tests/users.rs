//! Users, roles, groups, API tokens, console logins and the audit log:
//! what each caller sees and may do, over real HTTP on loopback.

mod common;

use common::{api, http_with, raw_ivt, start_cloud_with, TOKEN};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let b = body.map(|v| v.to_string());
    let (s, _, bytes) = http_with(addr, method, path, headers, b.as_deref().map(str::as_bytes)).await;
    (s, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Logs in; the cookie header value.
async fn login(addr: SocketAddr, name: &str, password: &str) -> String {
    let body = json!({"name": name, "password": password}).to_string();
    let (s, head, _) = http_with(addr, "POST", "/api/v1/login", &[], Some(body.as_bytes())).await;
    assert_eq!(s, 200, "{head}");
    let set = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Max-Age="), "{set}");
    set.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_string()
}

/// An alarm with a picture from a device session; the event's id.
async fn alarm(addr: SocketAddr, h: &ivr_rpc::conn::RpcHandle, desc: &str) {
    let r =
        h.call("AlarmNotify", Some(json!({"channel": 0, "type": 3, "state": "start", "desc": desc}))).await.unwrap();
    let url = r["pic_upload_url"].as_str().unwrap().to_owned();
    let path = url.split_once(&addr.to_string()).unwrap().1.to_owned();
    assert_eq!(http_with(addr, "POST", &path, &[], Some(b"\xff\xd8\xff\xe0jpeg\xff\xd9")).await.0, 204);
}

/// A cloud (cheap argon2) in a fresh folder with devices cam-a and cam-b.
async fn cloud_with_two_cameras(
    name: &str,
) -> (std::path::PathBuf, SocketAddr, std::sync::Arc<ivr_cloud::Cloud<ivr_cloud::SqlStore>>, tokio::task::JoinHandle<()>)
{
    let dir = std::env::temp_dir().join(format!("ivr-cloud-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, c, server) =
        start_cloud_with(&dir, |c| ivr_cloud::CloudConfig { hash_cost: "m=64,t=1,p=1".parse().unwrap(), ..c }).await;
    for lc in ["cam-a", "cam-b"] {
        let (s, _) =
            api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": lc, "login_passwd": "12345678"}))).await;
        assert_eq!(s, 201);
    }
    (dir, addr, c, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_scopes_tokens_logins_and_the_audit_log() {
    let (dir, addr, _c, _server) = cloud_with_two_cameras("users").await;
    let admin = format!("Bearer {TOKEN}");
    let admin = [("Authorization", admin.as_str())];
    let dev =
        |lc: &str| format!("ws://{addr}/ivc?login_code={lc}&login_passwd=12345678&hardware_model=t&firmware_model=1");
    let (a, b) = (raw_ivt(dev("cam-a")).await, raw_ivt(dev("cam-b")).await);
    alarm(addr, &a, "motion at A").await;
    alarm(addr, &b, "motion at B").await;

    // Users and a group, by the admin token.
    let (s, g) = call(addr, "PUT", "/api/v1/groups/site-b", &admin, Some(json!({"devices": ["cam-b"]}))).await;
    assert_eq!((s, &g["devices"]), (200, &json!(["cam-b"])));
    let (s, u) = call(
        addr,
        "POST",
        "/api/v1/users",
        &admin,
        Some(json!({"name": "vera", "password": "vera-password", "role": "viewer", "devices": ["cam-a"]})),
    )
    .await;
    assert_eq!((s, u["role"].as_str(), u.get("passwd_hash")), (201, Some("viewer"), None), "{u}");
    let (s, _) = call(
        addr,
        "POST",
        "/api/v1/users",
        &admin,
        Some(json!({"name": "otto", "password": "otto-password", "role": "operator", "groups": ["site-b"]})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, e) =
        call(addr, "POST", "/api/v1/users", &admin, Some(json!({"name": "x", "password": "short", "role": "viewer"})))
            .await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("password"), "{e}");
    let (s, e) = call(
        addr,
        "POST",
        "/api/v1/users",
        &admin,
        Some(json!({"name": "y", "password": "long enough", "role": "boss"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("boss"), "{e}");

    // A wrong password: 401, and audited with the address.
    let body = json!({"name": "vera", "password": "guess"}).to_string();
    assert_eq!(http_with(addr, "POST", "/api/v1/login", &[], Some(body.as_bytes())).await.0, 401);
    let (_, log) = call(addr, "GET", "/api/v1/audit", &admin, None).await;
    assert_eq!((log[0]["action"].as_str(), log[0]["target"].as_str()), (Some("login_failed"), Some("vera")), "{log}");
    assert_eq!(log[0]["addr"], "127.0.0.1");

    // The viewer sees cam-a only; cam-b is not found, in every form.
    let vera = login(addr, "vera", "vera-password").await;
    let origin = format!("http://{addr}");
    let v = [("Cookie", vera.as_str()), ("Origin", origin.as_str())];
    let (s, list) = call(addr, "GET", "/api/v1/devices", &v, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        list.as_array().unwrap().iter().map(|d| d["login_code"].as_str().unwrap()).collect::<Vec<_>>(),
        ["cam-a"]
    );
    let (_, page) = call(addr, "GET", "/api/v1/devices?limit=1", &v, None).await;
    assert_eq!(page.as_array().map(Vec::len), Some(1));
    let (s, rest) = call(addr, "GET", "/api/v1/devices?after=cam-a", &v, None).await;
    assert_eq!((s, rest.as_array().map(Vec::len)), (200, Some(0)), "{rest}");
    assert_eq!(call(addr, "GET", "/api/v1/devices/cam-b", &v, None).await.0, 404);
    assert_eq!(call(addr, "POST", "/api/v1/devices/cam-b/channels/0/live", &v, None).await.0, 404);
    assert_eq!(call(addr, "GET", "/api/v1/devices/cam-b/channels/0/preview", &v, None).await.0, 404);
    assert_eq!(call(addr, "GET", "/api/v1/devices/cam-b/channels/0/recordings", &v, None).await.0, 404);
    assert_eq!(call(addr, "GET", "/api/v1/events?login_code=cam-b", &v, None).await.0, 404);
    let (_, evs) = call(addr, "GET", "/api/v1/events?type=alarm", &v, None).await;
    assert_eq!(evs.as_array().unwrap().len(), 1, "{evs}");
    assert_eq!(evs[0]["login_code"], "cam-a");
    let (_, all) = call(addr, "GET", "/api/v1/events?type=alarm", &admin, None).await;
    let id_of =
        |lc: &str| all.as_array().unwrap().iter().find(|e| e["login_code"] == lc).unwrap()["id"].as_i64().unwrap();
    let (s, _, pic) = http_with(addr, "GET", &format!("/api/v1/events/{}/picture", id_of("cam-a")), &v, None).await;
    assert_eq!((s, &pic[..2]), (200, &b"\xff\xd8"[..]));
    assert_eq!(http_with(addr, "GET", &format!("/api/v1/events/{}/picture", id_of("cam-b")), &v, None).await.0, 404);
    // Watching is allowed, controlling is not.
    let (s, e) = call(addr, "POST", "/api/v1/devices/cam-a/rpc/RebootChannel", &v, Some(json!({"channel": 0}))).await;
    assert_eq!(s, 403, "{e}");
    // In a batch too, call by call: refused for the device the viewer
    // watches, "not found" for the one they do not see.
    let both = json!({"calls": [
        {"device": "cam-a", "method": "GetNetConfig", "params": {"channel": 0}},
        {"device": "cam-b", "method": "GetNetConfig", "params": {"channel": 0}},
    ]});
    let (s, r) = call(addr, "POST", "/api/v1/rpc", &v, Some(both.clone())).await;
    assert_eq!((s, &r["results"][0]["status"], &r["results"][1]["status"]), (200, &json!(403), &json!(404)), "{r}");
    assert_eq!(call(addr, "GET", "/api/v1/users", &v, None).await.0, 403);
    assert_eq!(call(addr, "GET", "/api/v1/audit", &v, None).await.0, 403);
    assert_eq!(call(addr, "GET", "/api/v1/users/otto", &v, None).await.0, 404);
    let (s, me) = call(addr, "GET", "/api/v1/me", &v, None).await;
    assert_eq!((s, me["role"].as_str(), &me["devices"]), (200, Some("viewer"), &json!(["cam-a"])));

    // The event stream carries only the viewer's devices.
    let (mut sse, mut got) = common::open_stream(addr, &format!("Cookie: {vera}")).await;
    let mut buf = [0u8; 4096];
    alarm(addr, &b, "second at B").await;
    alarm(addr, &a, "second at A").await;
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let text = String::from_utf8_lossy(&got).to_string();
            if text.contains("second at A") {
                return text;
            }
            let n = sse.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("cam-a's alarm on the stream");
    assert!(!seen.contains("cam-b"), "{seen}");

    // Cross-site: a state-changing call with the cookie and no Origin of this site.
    let (s, e) = call(addr, "POST", "/api/v1/devices/cam-a/channels/0/live", &[("Cookie", vera.as_str())], None).await;
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("cross-site"), "{e}");
    let evil = [("Cookie", vera.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(call(addr, "POST", "/api/v1/logout", &evil, None).await.0, 403);

    // The operator controls the group's device, and it is audited.
    let otto = login(addr, "otto", "otto-password").await;
    let o = [("Cookie", otto.as_str()), ("Origin", origin.as_str())];
    let (s, r) = call(addr, "POST", "/api/v1/devices/cam-b/rpc/RebootChannel", &o, Some(json!({"channel": 0}))).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        call(addr, "POST", "/api/v1/devices/cam-a/rpc/RebootChannel", &o, Some(json!({"channel": 0}))).await.0,
        404
    );
    let (s, r) = call(addr, "POST", "/api/v1/rpc", &o, Some(both)).await;
    assert_eq!((s, &r["results"][0]["status"], &r["results"][1]["status"]), (200, &json!(404), &json!(200)), "{r}");
    let (_, log) = call(addr, "GET", "/api/v1/audit", &admin, None).await;
    let rpc = log.as_array().unwrap().iter().find(|e| e["action"] == "rpc").unwrap();
    assert_eq!((rpc["actor"].as_str(), rpc["target"].as_str()), (Some("user:otto"), Some("cam-b")));
    assert_eq!(rpc["detail"]["method"], "RebootChannel");
    // A group change shows at once.
    call(addr, "PUT", "/api/v1/groups/site-b", &admin, Some(json!({"devices": ["cam-a", "cam-b"]}))).await;
    assert_eq!(call(addr, "GET", "/api/v1/devices/cam-a", &o, None).await.0, 200);

    // A user changes their own password, not their role; other logins end.
    let vera2 = login(addr, "vera", "vera-password").await;
    let (s, _) = call(addr, "PATCH", "/api/v1/users/vera", &v, Some(json!({"role": "admin"}))).await;
    assert_eq!(s, 403);
    let (s, _) = call(addr, "PATCH", "/api/v1/users/vera", &v, Some(json!({"password": "new-vera-pw"}))).await;
    assert_eq!(s, 200);
    assert_eq!(call(addr, "GET", "/api/v1/me", &v, None).await.0, 200, "the caller's own login goes on");
    assert_eq!(call(addr, "GET", "/api/v1/me", &[("Cookie", vera2.as_str())], None).await.0, 401);

    // Logout ends the cookie at once.
    assert_eq!(call(addr, "POST", "/api/v1/logout", &v, None).await.0, 204);
    assert_eq!(call(addr, "GET", "/api/v1/devices", &v, None).await.0, 401);
    // …and the event stream opened with it ends (it checks every 5 s).
    let ended = tokio::time::timeout(Duration::from_secs(9), async {
        let mut tail = Vec::new();
        loop {
            let n = sse.read(&mut buf).await.unwrap_or(0);
            tail.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&tail).contains("event: end") {
                return String::from_utf8_lossy(&tail).to_string();
            }
        }
    })
    .await
    .expect("the stream of a logged-out user ends");
    assert!(ended.contains("your login has ended"), "{ended}");

    // API tokens: shown once, scoped, revoked at once.
    let (s, t) = call(
        addr,
        "POST",
        "/api/v1/tokens",
        &admin,
        Some(json!({"name": "wallboard", "role": "viewer", "devices": ["cam-b"], "expires": "30d"})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let secret = t["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("ivr_"));
    let bearer = format!("Bearer {secret}");
    let tk = [("Authorization", bearer.as_str())];
    let (_, list) = call(addr, "GET", "/api/v1/devices", &tk, None).await;
    assert_eq!(list[0]["login_code"], "cam-b");
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, tokens) = call(addr, "GET", "/api/v1/tokens", &admin, None).await;
    assert!(tokens[0].get("token").is_none() && tokens[0].get("hash").is_none(), "{tokens}");
    let id = t["id"].as_str().unwrap();
    assert_eq!(call(addr, "DELETE", &format!("/api/v1/tokens/{id}"), &admin, None).await.0, 204);
    let (s, e) = call(addr, "GET", "/api/v1/devices", &tk, None).await;
    assert_eq!(s, 401, "{e}");
    let (s, _) =
        call(addr, "POST", "/api/v1/tokens", &admin, Some(json!({"name": "old", "role": "viewer", "expires": 1000})))
            .await;
    assert_eq!(s, 400, "an expiry in the past");

    // Failed logins are throttled per name.
    for _ in 0..10 {
        let body = json!({"name": "otto", "password": "wrong-password"}).to_string();
        http_with(addr, "POST", "/api/v1/login", &[], Some(body.as_bytes())).await;
    }
    let body = json!({"name": "otto", "password": "otto-password"}).to_string();
    let (s, head, _) = http_with(addr, "POST", "/api/v1/login", &[], Some(body.as_bytes())).await;
    assert_eq!(s, 429, "even the right password waits");
    assert!(head.to_ascii_lowercase().contains("retry-after"));

    // Deleting a user ends their logins.
    assert_eq!(call(addr, "DELETE", "/api/v1/users/otto", &admin, None).await.0, 204);
    assert_eq!(call(addr, "GET", "/api/v1/me", &o, None).await.0, 401);
    let (_, log) = call(addr, "GET", "/api/v1/audit?limit=500", &admin, None).await;
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "user_created",
        "group_set",
        "login",
        "logout",
        "token_created",
        "token_revoked",
        "user_deleted",
        "user_changed",
    ] {
        assert!(actions.contains(&a), "{a} not in the audit log: {actions:?}");
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_logins_waiting_for_argon2_are_bounded_per_address() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-users2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The default cost: each check takes tens of milliseconds.
    let (addr, _c, _server) = start_cloud_with(&dir, |c| c).await;
    // Names of their own: the per-name throttle (10 a minute) stays out of it.
    let tries: Vec<_> = (0..24)
        .map(|i| {
            let body = json!({"name": format!("nobody-{i}"), "password": "not a password"}).to_string();
            tokio::spawn(async move { http_with(addr, "POST", "/api/v1/login", &[], Some(body.as_bytes())).await })
        })
        .collect();
    let mut got = Vec::new();
    for t in tries {
        let (s, head, _) = t.await.unwrap();
        if s == 503 {
            assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
        }
        got.push(s);
    }
    let (busy, wrong) = (got.iter().filter(|s| **s == 503).count(), got.iter().filter(|s| **s == 401).count());
    assert_eq!(busy + wrong, 24, "{got:?}");
    assert!(busy >= 1 && wrong >= 8, "eight wait for argon2, the rest are told to come back: {got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_credentials_are_trusted_for_a_second_and_forgotten_on_a_change() {
    use ivr_cloud::Accounts;
    let (dir, addr, c, _server) = cloud_with_two_cameras("users3").await;
    let admin = format!("Bearer {TOKEN}");
    let admin = [("Authorization", admin.as_str())];
    let (s, _) = call(addr, "PUT", "/api/v1/groups/site", &admin, Some(json!({"devices": ["cam-a"]}))).await;
    assert_eq!(s, 200);
    let (s, t) = call(
        addr,
        "POST",
        "/api/v1/tokens",
        &admin,
        Some(json!({"name": "script", "role": "viewer", "groups": ["site"]})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let bearer = format!("Bearer {}", t["token"].as_str().unwrap());
    let tk = [("Authorization", bearer.as_str())];
    let seen = async || -> Vec<String> {
        let (s, list) = call(addr, "GET", "/api/v1/devices", &tk, None).await;
        assert_eq!(s, 200, "{list}");
        list.as_array().unwrap().iter().map(|d| d["login_code"].as_str().unwrap().to_owned()).collect()
    };
    let creds = async || call(addr, "GET", "/api/v1/stats", &admin, None).await.1["credentials"].clone();
    let before = creds().await;

    // Many requests, few reads: the token, its groups, once a second.
    let t0 = std::time::Instant::now();
    for _ in 0..40 {
        assert_eq!(seen().await, ["cam-a"]);
    }
    let secs = t0.elapsed().as_secs() + 1;
    let after = creds().await;
    let read = after["read"].as_u64().unwrap() - before["read"].as_u64().unwrap();
    let copies = after["from_copy"].as_u64().unwrap() - before["from_copy"].as_u64().unwrap();
    assert!(read <= secs + 1 && copies >= 40 - read, "{read} reads and {copies} copies in {secs} s: {after}");
    assert_eq!(after["trusted"], 1, "{after}");

    // A change through the API is seen by the next request.
    let (s, _) = call(addr, "PUT", "/api/v1/groups/site", &admin, Some(json!({"devices": ["cam-b"]}))).await;
    assert_eq!(s, 200);
    assert_eq!(seen().await, ["cam-b"], "a changed group reaches a token's copy at once");

    // A change made on the database directly (as `ivr cloud users` does)
    // reaches the running cloud when the copy runs out, within a second.
    let id = t["id"].as_str().unwrap();
    assert!(c.store().delete_token(id).await.unwrap());
    let t0 = std::time::Instant::now();
    loop {
        let (s, _) = call(addr, "GET", "/api/v1/devices", &tk, None).await;
        if s == 401 {
            break;
        }
        assert_eq!(s, 200);
        assert!(t0.elapsed() < Duration::from_secs(3), "a token deleted on the database still works after 3 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(creds().await["trusted"], 0, "a token the store no longer has is not kept");
    let _ = std::fs::remove_dir_all(&dir);
}
