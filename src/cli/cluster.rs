//! `spate cluster status`: the brokers, the voters and the active controller, as a voter sees
//! them. `spate cluster log-dirs`: each broker's data directory, replicas and free space.
//! `spate cluster config`: the dynamic broker settings, changed or shown. `spate cluster
//! local`: a cluster of several brokers on this machine in one command.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;

use crate::cli::topic::connect;
use crate::cli::{run_client, BrokerAddress, ConfigChanges};
use crate::cluster::metadata::ResourceSettings;
use crate::config::host_port;
use crate::native::messages::ClusterStatus;
use crate::types::NodeId;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Print the brokers (id, addresses, rack, live or fenced, epoch), the controller voters and
    /// the active controller, and the partitions without a leader. Ask a controller voter.
    Status {
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Print each live broker's data directory with its file system's size and free bytes, and
    /// every replica it holds with the bytes its segments take (Kafka's kafka-log-dirs).
    LogDirs {
        /// Only this topic's replicas.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Change the dynamic broker settings at once, on every broker, without a restart (Kafka's
    /// broker configs, KIP-226): the defaults of topic settings by their broker names
    /// (log.retention.ms, message.max.bytes, ...), cluster-wide or for one broker. Without
    /// changes, print them.
    Config {
        /// Broker N's own settings, which hold over the cluster-wide ones on broker N; without
        /// it, the cluster-wide defaults.
        #[arg(long, value_name = "N")]
        node: Option<i32>,
        #[command(flatten)]
        changes: ConfigChanges,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Start a cluster of several brokers on this machine (child processes on loopback, one
    /// shard each, the first three the controller's voters), print their addresses, and stop
    /// them all together on Ctrl-C. One that dies leaves the others running.
    Local {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
        brokers: u16,
        /// Each broker's data goes in `node-N` under this directory.
        #[arg(long, value_name = "DIR", default_value = "./spate-cluster")]
        data_dir: PathBuf,
        /// Broker N's Kafka listener is on this port + N - 1, its native one 100 above, its
        /// `/metrics` 200 above.
        #[arg(long, value_name = "PORT", default_value_t = 19092)]
        base_port: u16,
        /// Also pass this setting to every broker (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::parse_key_value)]
        settings: Vec<(String, String)>,
    },
}

/// How many of a local cluster's brokers are voters: three survive the loss of one.
const LOCAL_VOTERS: u16 = 3;
/// How long a local cluster's brokers get to stop cleanly before they are killed.
const LOCAL_STOP_WAIT: Duration = Duration::from_secs(30);

impl ClusterCommand {
    pub fn run(self) -> Result<(), String> {
        match self {
            ClusterCommand::Status { broker } => run_client(|| async move {
                let client = connect(&broker).await?;
                let status = client.cluster_status().await.map_err(|e| e.to_string())?;
                print!("{}", render(&status));
                Ok(())
            }),
            ClusterCommand::LogDirs { topic, broker } => run_client(|| async move {
                let client = connect(&broker).await?;
                let metadata = client.metadata(Some(Vec::new()), false).await;
                let metadata = metadata.map_err(|e| e.to_string())?;
                for broker in &metadata.brokers {
                    let address = host_port(&broker.host, broker.port);
                    let asked = async {
                        match broker.node == metadata.node {
                            true => client.log_dirs().await,
                            false => {
                                crate::client::Client::connect(&address).await?.log_dirs().await
                            }
                        }
                    };
                    let dirs = asked.await.map_err(|e| format!("broker {address}: {e}"))?;
                    println!(
                        "broker {} {}  {} of {} bytes free",
                        broker.node, dirs.log_dir, dirs.usable_bytes, dirs.total_bytes
                    );
                    let shown = (dirs.replicas.iter())
                        .filter(|(name, _, _)| topic.as_ref().is_none_or(|t| t == name));
                    for (name, partition, bytes) in shown {
                        println!("  {name}-{partition}  {bytes} bytes");
                    }
                }
                Ok(())
            }),
            ClusterCommand::Config { node, changes, broker } => {
                let validate_only = changes.validate_only;
                let changes = changes.into_changes();
                run_client(|| async move {
                    let client = connect(&broker).await?;
                    let node = node.map(NodeId);
                    // A broker's own settings are changed at that broker, as Kafka's are.
                    let client = match node {
                        Some(node) if !changes.is_empty() => {
                            let metadata = client.metadata(Some(Vec::new()), false).await;
                            let metadata = metadata.map_err(|e| e.to_string())?;
                            match metadata.brokers.iter().find(|b| b.node == node) {
                                _ if metadata.node == node => client,
                                Some(b) => {
                                    let address = host_port(&b.host, b.port);
                                    let connected = crate::client::Client::connect(&address).await;
                                    connected.map_err(|e| format!("broker {node}: {e}"))?
                                }
                                None => return Err(format!("no live broker {node}")),
                            }
                        }
                        _ => client,
                    };
                    let count = changes.len();
                    let settings = client.broker_config(node, changes, validate_only).await;
                    let settings = settings.map_err(|e| e.to_string())?;
                    let resource =
                        node.map_or("the cluster-wide defaults".into(), |n| format!("broker {n}"));
                    match (count, validate_only) {
                        (0, _) => {}
                        (_, true) => println!("{count} change(s) to {resource} would be taken"),
                        (_, false) => println!("changed {count} setting(s) of {resource}"),
                    }
                    print!("{}", render_broker_settings(&settings));
                    Ok(())
                })
            }
            ClusterCommand::Local { brokers, data_dir, base_port, settings } => {
                LocalCluster { brokers, data_dir, base_port, settings }.run()
            }
        }
    }
}

/// Every resource's dynamic broker settings, a line each, under its resource.
fn render_broker_settings(settings: &[ResourceSettings]) -> String {
    if settings.is_empty() {
        return "no dynamic broker settings: every broker runs with its own file and flags\n"
            .into();
    }
    let mut text = String::new();
    for (node, resource) in settings {
        match node {
            None => text.push_str("cluster-wide defaults\n"),
            Some(node) => text.push_str(&format!("broker {node}\n")),
        }
        for (key, value) in resource {
            text.push_str(&format!("  {key}={value}\n"));
        }
    }
    text
}

struct LocalCluster {
    brokers: u16,
    data_dir: PathBuf,
    base_port: u16,
    settings: Vec<(String, String)>,
}

impl LocalCluster {
    /// Broker `node`'s Kafka, native and metrics ports.
    fn ports(&self, node: u16) -> Result<(u16, u16, u16), String> {
        let kafka = self.base_port.checked_add(node - 1);
        let native = kafka.and_then(|k| k.checked_add(100));
        let metrics = kafka.and_then(|k| k.checked_add(200));
        match (kafka, native, metrics) {
            (Some(kafka), Some(native), Some(metrics)) => Ok((kafka, native, metrics)),
            _ => Err(format!("--base-port {} leaves no room", self.base_port)),
        }
    }

    fn run(self) -> Result<(), String> {
        let stop = Arc::new(AtomicBool::new(false));
        // SIGHUP too: a closed terminal stops the cluster rather than leave it running.
        for signal in
            [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP]
        {
            signal_hook::flag::register(signal, stop.clone())
                .map_err(|e| format!("installing the signal handler: {e}"))?;
        }
        let exe = std::env::current_exe().map_err(|e| format!("finding the spate binary: {e}"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let voters = (1..=self.brokers.min(LOCAL_VOTERS))
            .map(|n| Ok(format!("{n}@127.0.0.1:{}", self.ports(n)?.1)))
            .collect::<Result<Vec<_>, String>>()?
            .join(",");
        let mut children: Vec<(u16, Child)> = Vec::new();
        for node in 1..=self.brokers {
            match self.start(&exe, node, &voters, (usize::from(node) - 1) % cpus) {
                Ok(child) => children.push((node, child)),
                Err(e) => {
                    stop_all(&mut children, &stop);
                    return Err(e);
                }
            }
        }
        let kafka: Vec<String> = (1..=self.brokers)
            .filter_map(|n| self.ports(n).ok())
            .map(|p| format!("127.0.0.1:{}", p.0))
            .collect();
        println!(
            "{} brokers running; logs in {}/node-N.log",
            self.brokers,
            self.data_dir.display()
        );
        println!("Kafka bootstrap: {}", kafka.join(","));
        let metrics: Vec<String> = (1..=self.brokers)
            .filter_map(|n| self.ports(n).ok())
            .map(|p| format!("http://127.0.0.1:{}/metrics", p.2))
            .collect();
        println!("metrics: {}", metrics.join(" "));
        println!(
            "native: 127.0.0.1:{} (spate cluster status -b 127.0.0.1:{})",
            self.ports(1)?.1,
            self.ports(1)?.1
        );
        println!("Ctrl-C stops them all.");
        // A broker that dies (`kill -9` to watch a failover, say) leaves the others running:
        // the cluster goes on without it, as a real one would.
        let outcome = loop {
            if stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let exited = children.iter_mut().enumerate().find_map(|(at, (node, child))| {
                child.try_wait().ok().flatten().map(|status| (at, *node, status))
            });
            if let Some((at, node, status)) = exited {
                children.remove(at);
                eprintln!(
                    "spate: broker {node} exited with {status} (see its log); the others go on"
                );
                if children.is_empty() {
                    break Err("every broker exited".to_string());
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        stop_all(&mut children, &stop);
        outcome
    }

    fn start(&self, exe: &Path, node: u16, voters: &str, cpu: usize) -> Result<Child, String> {
        let (kafka, native, metrics) = self.ports(node)?;
        let dir = self.data_dir.join(format!("node-{node}"));
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("creating {}: {e}", self.data_dir.display()))?;
        let log_path = self.data_dir.join(format!("node-{node}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{native}")])
            .args(["--kafka-listener", &format!("127.0.0.1:{kafka}")])
            .args(["--metrics-listener", &format!("127.0.0.1:{metrics}")])
            .args(["--cores", &cpu.to_string()])
            .args(["--set", &format!("node.id={node}")])
            .args(["--set", &format!("controller.quorum.voters={voters}")]);
        for (key, value) in &self.settings {
            command.args(["--set", &format!("{key}={value}")]);
        }
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: Ctrl-C reaches this command alone, which stops each broker
            // once (a broker takes a second signal as "exit now, without a clean stop").
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: runs in the forked child before exec, and only calls prctl and getppid, which
        // are async-signal-safe, and builds errors that do not allocate.
        unsafe {
            command.pre_exec(move || {
                // If this command dies without stopping the brokers (kill -9, a crash), each is
                // told to stop, cleanly, rather than left running on the ports.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // It may have died between the fork and the prctl: then no signal would come.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        command.spawn().map_err(|e| format!("starting broker {node}: {e}"))
    }
}

/// SIGTERM to every broker (each makes a controlled shutdown), then waits; one that does not
/// stop in time, or when another signal comes (a second Ctrl-C), is killed.
fn stop_all(children: &mut Vec<(u16, Child)>, signalled: &AtomicBool) {
    signalled.store(false, Ordering::SeqCst);
    for (_, child) in children.iter_mut() {
        // One already reaped has no process any more, and its pid may be another's by now.
        if !matches!(child.try_wait(), Ok(None)) {
            continue;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill only sends a signal; the pid is a child this process started and has
            // not reaped (checked just above), so it is still that child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + LOCAL_STOP_WAIT;
    for (node, child) in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None))
            && Instant::now() < deadline
            && !signalled.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!(
                "broker {node} did not stop (in time, or before a second signal): killing it"
            );
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    children.clear();
}

fn render(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let voters: Vec<String> = status.voters.iter().map(|v| v.to_string()).collect();
    let leader = status.leader.map_or("none elected".to_string(), |l| l.to_string());
    let cluster = status.cluster_id.map_or("not formed yet".to_string(), |id| id.to_string());
    out.push_str(&format!("cluster {cluster}\n"));
    out.push_str(&format!(
        "controller voters {}  active controller {leader}  term {}  (as node {} sees it, \
         metadata applied to entry {})\n",
        voters.join(","),
        status.term,
        status.node,
        status.applied
    ));
    let log = match status.log_start {
        0 => String::new(),
        start => format!(", its log on disk from entry {}", start + 1),
    };
    match status.snapshot {
        0 => out.push_str("metadata snapshot none yet\n"),
        index => out.push_str(&format!("metadata snapshot to entry {index}{log}\n")),
    }
    for b in &status.brokers {
        let state = match (b.fenced, b.shut_down) {
            (false, _) => "live",
            (true, true) => "shut down",
            (true, false) => "fenced",
        };
        let (kafka, native) = (&b.endpoints.kafka, &b.endpoints.native);
        out.push_str(&format!(
            "broker {:>4}  {:<9}  epoch {:>6}  protocol {}  kafka {}  native {}  rack {}\n",
            b.node,
            state,
            b.broker_epoch,
            b.protocol_version,
            host_port(&kafka.0, kafka.1),
            host_port(&native.0, native.1),
            b.rack.as_deref().unwrap_or("-")
        ));
    }
    out.push_str(&format!(
        "topics {}  offline partitions {}  under-replicated partitions {}\n",
        status.topics, status.offline_partitions, status.under_replicated_partitions
    ));
    out
}
