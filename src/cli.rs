//! The `township-node` command line. This is CLI glue: errors are `anyhow` here and nowhere else,
//! printed as one readable chain, with exit status 1 (clap's usage errors exit 2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use township_sync::{AreaCode, NodeRole};

use crate::app;
use crate::config::{Config, LogFormat};
use crate::doctor::{self, Verdict};
use crate::node::{self, DataDir, InitRequest};
use crate::store;

#[derive(Debug, Parser)]
#[command(
    name = "township-node",
    version,
    about = "Offline-first node for grassroots digital governance (基层治理): incidents, sensors, warnings and broadcast, synced to the county.",
    long_about = None,
    after_help = "Configuration is layered: built-in defaults, then the TOML file (--config, or township-node.toml in the data directory), then TOWNSHIP_<SECTION>__<KEY> environment variables, then flags. See deploy/township-node.example.toml."
)]
pub struct Cli {
    /// Log format: human-readable lines or one JSON object per line. Overrides log.format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new data directory with its database and the node's Ed25519 key pair; prints the node id and public key.
    Init(InitArgs),
    /// Print this node's identity as JSON: node_id, public_key, area, role.
    Id(DataDirArg),
    /// Run the node: the web UI and API, and every background task, until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Run a demo node, creating it in a new directory first; prints the URL to open.
    Demo(DemoArgs),
    /// Copy the database consistently with SQLite's online backup, while the node may be running.
    Backup(BackupArgs),
    /// Check a data directory (permissions, database integrity, key, config) and say what to fix.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
struct DataDirArg {
    /// The node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Where to create the data directory; it must not exist yet.
    #[arg(long)]
    data_dir: PathBuf,
    /// Administrative area code: 6 digits for a county, 9 for a township, 12 for a village.
    #[arg(long)]
    area: AreaCode,
    /// Human-readable name of the node, for example 熟溪街道.
    #[arg(long)]
    name: String,
    /// Where this node sits in the tree; must match the area code's level.
    #[arg(long)]
    role: NodeRole,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Config file; defaults to township-node.toml in the data directory when present.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, for example 0.0.0.0:8080 or 127.0.0.1:0. Overrides http.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[arg(long, default_value = "./demo-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
struct BackupArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// The backup file to write; must not exist yet.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Config file to check; defaults to township-node.toml in the data directory when present.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Parses arguments, runs the command, and turns the outcome into an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn config_path(dir: &DataDir, explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let default = dir.default_config();
        default.exists().then_some(default)
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Init(args) => {
            let config = Config::load_from_process(None)?;
            crate::logging::init(log_format.unwrap_or(config.log.format), "warn");
            let dir = DataDir::new(&args.data_dir);
            let request = InitRequest {
                area: args.area,
                role: args.role,
                name: args.name,
            };
            let info = runtime()?.block_on(node::init(&dir, request, &config.store))?;
            println!(
                "initialised {} node \"{}\" for area {} in {}",
                info.role,
                info.name,
                info.area,
                dir.root().display()
            );
            println!("node_id:    {}", info.node_id);
            println!("public_key: {}", info.public_key);
            Ok(ExitCode::SUCCESS)
        }
        Command::Id(args) => {
            let dir = DataDir::new(&args.data_dir);
            let info = node::read_identity_offline(&dir, &Default::default())?;
            let json = serde_json::json!({
                "node_id": info.node_id,
                "public_key": info.public_key,
                "area": info.area,
                "role": info.role,
                "name": info.name,
            });
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let dir = DataDir::new(&args.data_dir);
            let file = config_path(&dir, args.config);
            let mut config = Config::load_from_process(file.as_deref())?;
            if let Some(listen) = args.listen {
                config.http.listen = listen;
            }
            if let Some(format) = log_format {
                config.log.format = format;
            }
            crate::logging::init(config.log.format, &config.log.filter);
            runtime()?.block_on(serve(&dir, config, None))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let dir = DataDir::new(&args.data_dir);
            let file = config_path(&dir, None);
            let mut config = Config::load_from_process(file.as_deref())?;
            config.http.listen = args.listen;
            if let Some(format) = log_format {
                config.log.format = format;
            }
            crate::logging::init(config.log.format, &config.log.filter);
            runtime()?.block_on(async {
                if !dir.root().exists() {
                    let info = node::init(&dir, demo_request()?, &config.store).await?;
                    tracing::info!(node_id = %info.node_id, dir = %dir.root().display(), "demo node initialised");
                }
                serve(&dir, config, Some(())).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(args) => {
            let dir = DataDir::new(&args.data_dir);
            dir.ensure_exists()?;
            let config = Config::load_from_process(config_path(&dir, None).as_deref())?;
            let bytes =
                store::online_backup(&dir.db(), &args.out, &config.store).with_context(|| {
                    format!(
                        "backup of {} to {} failed",
                        dir.db().display(),
                        args.out.display()
                    )
                })?;
            println!("backup written to {} ({bytes} bytes)", args.out.display());
            println!(
                "the node key is not in the backup: keep a copy of {} somewhere safe as well",
                dir.key().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            let dir = DataDir::new(&args.data_dir);
            let file = config_path(&dir, args.config);
            let checks = doctor::run(&dir, file.as_deref());
            for c in &checks {
                println!("{c}");
            }
            let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
            let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
            if failed > 0 {
                println!("{failed} problem(s) to fix, {warned} warning(s)");
                Ok(ExitCode::FAILURE)
            } else {
                println!("all checks passed ({warned} warning(s))");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn demo_request() -> Result<InitRequest> {
    Ok(InitRequest {
        area: "330723001".parse()?,
        role: NodeRole::Township,
        name: "熟溪街道（演示）".into(),
    })
}

/// Opens the node, serves until a signal, and shuts down in order. `demo` prints where to look.
async fn serve(dir: &DataDir, config: Config, demo: Option<()>) -> Result<()> {
    let listen = config.http.listen;
    let grace = config.http.shutdown_grace;
    let opened = app::open(dir, config).await?;
    let state = opened.state.clone();
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            app::finish(&state, Duration::from_secs(1)).await;
            bail!("cannot listen on {listen}: {e}");
        }
    };
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    tracing::info!(node_id = %state.node.node_id, area = %state.node.area, role = %state.node.role, "listening on http://{addr}");
    if demo.is_some() {
        let shown = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        println!(
            "township-node demo is running: open http://{shown}/ in a browser (Ctrl+C to stop)"
        );
    }
    app::spawn_signal_handler(state.shutdown.clone());
    let served = app::run(listener, state.clone()).await;
    app::finish(&state, grace.min(Duration::from_secs(5))).await;
    drop(opened);
    served.context("the HTTP server failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}
