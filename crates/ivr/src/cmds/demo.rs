//! `ivr demo`: the cloud and a few simulated sites connected to it, in one
//! process, with nothing else to install.

use super::cloud;
use anyhow::Context;
use clap::Args as ClapArgs;
use ivr_cloud::Store;
use ivr_edge::{ChannelBackend, Edge, EdgeConfig, SimChannel};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(ClapArgs)]
pub struct Args {
    /// HTTP address of the cloud (API, web console, device gateway).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data directory (SQLite, pictures, admin token).
    #[arg(long, default_value = "ivr-demo-data")]
    data: PathBuf,
    /// The cloud's RTMP ingest (live view); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    rtmp_listen: SocketAddr,
    /// Simulated sites (edge agents) to connect.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    sites: u32,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let args = cloud::Args {
        keepalive_secs: 5,
        // Live view needs nothing installed: the cloud's own RTMP ingest.
        rtmp_listen: Some(a.rtmp_listen),
        ..cloud::Args::new(a.listen, a.data.clone())
    };
    let (c, listener, token, _) = cloud::start(&args).await?;
    let addr = listener.local_addr()?;
    let store = c.store().clone();
    cloud::reconcile(&c, cloud::Reconcile::Recent).await?;
    // The console's demo admin: a new random password every start.
    let demo_pw = ivr_cloud::demo_password();
    let demo_user = ivr_cloud::set_demo_admin(&c, "demo", &demo_pw).await.context("creating the demo admin")?;
    tokio::spawn(ivr_cloud::serve(c.clone(), listener));
    for i in 1..=a.sites {
        let code = format!("demo-site-{i}");
        // Demo credentials are not secrets: they only open simulated sites.
        let pw = format!("demo-password-{i}");
        if store.device(&code).await?.is_none() {
            c.provision(&code, &pw, &format!("Demo site {i}")).await?;
        }
        let channels = if i % 2 == 0 { 2 } else { 1 };
        let toml = format!(
            "[cloud]\nurl = \"ws://{addr}/ivc\"\nlogin_code = \"{code}\"\nlogin_passwd = \"{pw}\"\nkeepalive_secs = 5\n{}",
            (0..channels)
                .map(|c| {
                    // Site 1 raises simulated motion alarms; every channel sends previews.
                    let alarms = if i == 1 { 30 } else { 0 };
                    format!("\n[[channels]]\nchannel = {c}\nsource = \"sim\"\nalarm_every_secs = {alarms}\npreview_every_secs = 10\n")
                })
                .collect::<String>()
        );
        let cfg = EdgeConfig::parse(&toml).map_err(anyhow::Error::msg).context("demo edge configuration")?;
        let chans: Vec<Arc<dyn ChannelBackend>> =
            (0..channels).map(|c| Arc::new(SimChannel::new(c)) as Arc<dyn ChannelBackend>).collect();
        tokio::spawn(Edge::new(cfg, chans).run());
    }
    // A site as a real one looks: a DVRIP NVR and a CVIP camera on the LAN
    // (simulated, on loopback ports), reached through dvrip:// and cvip://.
    let nvr = ivr_sim::dvrip::start(
        ivr_sim::dvrip::SimConfig {
            password: "demo-nvr".into(),
            channels: 4,
            device_type: "NVR".into(),
            alarm_every: Some(std::time::Duration::from_secs(45)),
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
        None,
    )
    .await
    .context("starting the demo's DVRIP NVR")?;
    let cam = ivr_sim::cvip::start(
        ivr_sim::cvip::CvipConfig { name: "Demo CVIP camera".into(), ..Default::default() },
        "127.0.0.1:0".parse()?,
        None,
    )
    .await
    .context("starting the demo's CVIP camera")?;
    let (code, pw) = ("demo-devices", "demo-password-devices");
    if store.device(code).await?.is_none() {
        c.provision(code, pw, "Demo site with a DVRIP NVR and a CVIP camera").await?;
    }
    let mut toml = format!(
        "[cloud]\nurl = \"ws://{addr}/ivc\"\nlogin_code = \"{code}\"\nlogin_passwd = \"{pw}\"\nkeepalive_secs = 5\n"
    );
    for ch in 0..4 {
        toml.push_str(&format!(
            "\n[[channels]]\nchannel = {ch}\nsource = \"dvrip://admin:demo-nvr@{}/{ch}\"\npreview_every_secs = 60\n",
            nvr.addr
        ));
    }
    toml.push_str(&format!(
        "\n[[channels]]\nchannel = 4\nsource = \"cvip://{}/1\"\npreview_every_secs = 0\n",
        cam.addr
    ));
    let cfg = EdgeConfig::parse(&toml).map_err(anyhow::Error::msg).context("demo device site configuration")?;
    let chans = ivr_edge::channels(&cfg, &ivr_rpc::net::Dialer::default())?;
    tokio::spawn(Edge::new(cfg, chans).run());
    println!("ivr demo: the cloud is at http://{addr}/ with {} simulated site(s) connected", a.sites + 1);
    println!(
        "site {code}: a DVRIP NVR (4 channels, dvrip://admin:demo-nvr@{}) and a CVIP camera (cvip://{}/1)",
        nvr.addr, cam.addr
    );
    println!("console: http://{addr}/login  user {demo_user:?}, password {demo_pw:?} (new at every start)");
    println!("admin token (API): {token}");
    println!("try:  curl -H 'Authorization: Bearer {token}' http://{addr}/api/v1/devices");
    println!("      curl -H 'Authorization: Bearer {token}' -X POST -d '{{\"channel\":0}}' http://{addr}/api/v1/devices/demo-site-1/rpc/GetPTZPresetList");
    println!("      curl -H 'Authorization: Bearer {token}' -X POST -d '{{\"channel\":1}}' http://{addr}/api/v1/devices/{code}/rpc/GetNetConfig");
    println!(
        "watch: curl -H 'Authorization: Bearer {token}' -X POST http://{addr}/api/v1/devices/{code}/channels/0/live"
    );
    println!("       (open its urls.player in a browser, or: ffplay <urls.mp4>)");
    println!("record: curl -H 'Authorization: Bearer {token}' -X PUT -d '{{\"mode\":\"continuous\"}}' http://{addr}/api/v1/devices/demo-site-1/channels/0/record-policy");
    println!("        curl -H 'Authorization: Bearer {token}' http://{addr}/api/v1/devices/demo-site-1/channels/0/recordings");
    println!("data in {}; Ctrl-C stops", a.data.display());
    let why = cloud::stop_signal().await?;
    cloud::stop(&c, why).await;
    drop((nvr, cam));
    Ok(())
}
