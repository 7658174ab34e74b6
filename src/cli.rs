//! The `township-node` command line. This is CLI glue: errors are `anyhow` here and nowhere else,
//! printed as one readable chain, with exit status 1 (clap's usage errors exit 2).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use township_sync::{AreaCode, NodeRole};

use crate::app;
use crate::config::{Config, LogFormat};
use crate::control;
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
    /// Manage accounts: add, passwd, disable, list. Works whether or not the node is running.
    #[command(subcommand)]
    User(UserCommand),
    /// Create API tokens for county scripts (`Authorization: Bearer ...`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Restore a database made by `backup` into a stopped node's data directory. The restored node
    /// writes with a new automerge actor id; an existing database is kept beside it.
    Restore(RestoreArgs),
    /// Enroll downstream nodes (townships, villages) by their public key.
    #[command(subcommand)]
    Enroll(EnrollCommand),
    /// Drop and rebuild every query table (projection) from the record documents.
    Rebuild(DataDirArg),
    /// Check the audit chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The node's own HTTPS certificate for the LAN: show it (CA fingerprint, names, expiry) or
    /// renew it.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Print the CA's SHA-256 fingerprint (what phones check when they trust it), the certificate's
    /// names and addresses, and when each expires.
    Show(TlsArgs),
    /// Reissue the server certificate under the same CA (phones keep trusting it); with --new-ca,
    /// make a new CA as well (every phone must trust the new one). A running node uses it at once.
    Renew(TlsRenewArgs),
}

#[derive(Debug, Args)]
struct TlsArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Config file; defaults to township-node.toml in the data directory when present.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TlsRenewArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Make a new CA too, covering the names now configured in [http] tls_names.
    #[arg(long)]
    new_ca: bool,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add an account. Without --password-file a random password is generated and printed once.
    Add(UserAddArgs),
    /// Set an account's password; ends its sessions. Without --password-file one is generated.
    Passwd(UserPasswdArgs),
    /// Disable an account: it can no longer sign in, and its sessions and tokens end.
    Disable(UsernameArgs),
    /// List the accounts this node knows.
    List(UserListArgs),
}

#[derive(Debug, Args)]
struct UserAddArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    username: String,
    /// grid_worker, township_staff, dept_handler, county_it or admin.
    #[arg(long)]
    role: String,
    /// The area code the person works in; must lie inside this node's area.
    #[arg(long)]
    area: String,
    /// Department id, required for dept_handler (for example water).
    #[arg(long)]
    department: Option<String>,
    #[arg(long)]
    display_name: Option<String>,
    #[arg(long)]
    phone: Option<String>,
    /// A file holding the password (first line). Keep it readable only by you.
    #[arg(long)]
    password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UserPasswdArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UsernameArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    username: String,
}

#[derive(Debug, Args)]
struct UserListArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token for a user; it is printed once and stored only as a hash.
    Create(TokenCreateArgs),
}

#[derive(Debug, Args)]
struct TokenCreateArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// The account the token acts as.
    #[arg(long)]
    user: String,
    /// What the token is for, for example "county nightly export".
    #[arg(long)]
    name: String,
}

#[derive(Debug, Subcommand)]
enum EnrollCommand {
    /// Enroll a node below this one; it may then connect with the key it made at `init`.
    Add(EnrollAddArgs),
}

#[derive(Debug, Args)]
struct EnrollAddArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// The node's public key, from `township-node id` on that node (may start with '-').
    #[arg(long, allow_hyphen_values = true)]
    public_key: String,
    /// The node's area code; must lie below this node's area.
    #[arg(long)]
    area: String,
    #[arg(long)]
    name: String,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify every entry's hash, the chain's links and the signed checkpoints. Exits non-zero naming
    /// the first bad sequence number.
    Verify(DataDirArg),
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
    /// A file holding the password of the local `admin` account. Without it a random password is
    /// generated and printed once.
    #[arg(long)]
    admin_password_file: Option<PathBuf>,
    /// The upstream node's URL (township or county), for example http://10.1.0.2:8080.
    #[arg(long, requires = "upstream_key")]
    upstream: Option<String>,
    /// The upstream's public key (from `township-node id` there), pinned from now on. Base64url keys
    /// may start with '-', so hyphen values are allowed.
    #[arg(long, requires = "upstream", allow_hyphen_values = true)]
    upstream_key: Option<township_sync::PublicKey>,
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
struct RestoreArgs {
    /// The data directory to restore into; created when missing (then --key is needed).
    #[arg(long)]
    data_dir: PathBuf,
    /// The backup file made by `township-node backup`.
    #[arg(long)]
    from: PathBuf,
    /// The node's key file, when the data directory does not hold it yet (a new machine).
    #[arg(long)]
    key: Option<PathBuf>,
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
            let (admin_password, generated) = password_from(args.admin_password_file.as_deref())?;
            let request = InitRequest {
                area: args.area,
                role: args.role,
                name: args.name,
                admin_password_hash: hash_password(
                    &admin_password,
                    config.auth.password_iterations,
                )?,
                upstream: args.upstream.zip(args.upstream_key),
            };
            let info = runtime()?.block_on(node::init(&dir, request, &config.store))?;
            println!(
                "initialised {} node \"{}\" for area {} in {}",
                info.role,
                info.name,
                info.area,
                dir.root().display()
            );
            if config.http.https_listen.is_some() {
                let configured = &config.http.tls_names;
                let (certs, _) = crate::tls::certs::ensure(
                    dir.root(),
                    &info.name,
                    configured,
                    &crate::tls::certs::wanted_names(configured),
                    crate::clock::system_now_ms(),
                    crate::tls::Renew::IfNeeded,
                    false,
                )?;
                println!("LAN CA SHA-256: {}", certs.ca_fingerprint());
            }
            println!("node_id:    {}", info.node_id);
            println!("public_key: {}", info.public_key);
            if generated {
                println!("admin password (shown once, write it down): {admin_password}");
            } else {
                println!("admin password: taken from the password file");
            }
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
            runtime()?.block_on(serve(&dir, config, false))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let dir = DataDir::new(&args.data_dir);
            let file = config_path(&dir, None);
            let mut config = Config::load_from_process(file.as_deref())?;
            config.http.listen = args.listen;
            if config.devices.is_empty() {
                crate::demo::add_stations(&mut config);
                crate::demo::add_area_names(&mut config);
            }
            if config.pa.zones.is_empty() {
                crate::demo::add_loudspeakers(&mut config, dir.root());
            }
            if let Some(format) = log_format {
                config.log.format = format;
            }
            crate::logging::init(config.log.format, &config.log.filter);
            runtime()?.block_on(async {
                if !dir.root().exists() {
                    let (password, _) = password_from(None)?;
                    let hash = hash_password(&password, config.auth.password_iterations)?;
                    let info = node::init(&dir, demo_request(hash)?, &config.store).await?;
                    let (people_password, _) = password_from(None)?;
                    let incidents = crate::demo::seed(&dir, config.clone(), &people_password).await?;
                    tracing::info!(node_id = %info.node_id, dir = %dir.root().display(), incidents, "demo node initialised");
                    println!("demo node created in {} with {incidents} incidents", dir.root().display());
                    println!("  admin (local administrator): {password}");
                    println!("  zhang.min (township staff), wang.fang and li.qiang (grid workers), zhao.lei (water),");
                    println!("  chen.jing (emergency), sun.hao (enforcement), liu.yang (housing), he.li (environment),");
                    println!("  qian.wei (market), wu.gang (police), it.zhou (county IT): {people_password}");
                    println!("  (passwords are shown once; keep them)");
                }
                if let Some(speaker) = crate::demo::add_speaker(&mut config, dir.root())? {
                    println!("  an IP loudspeaker for the township hall can join with the reference speaker:");
                    println!("  {speaker}");
                }
                serve(&dir, config, true).await
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
        Command::User(cmd) => user_command(cmd),
        Command::Enroll(EnrollCommand::Add(args)) => {
            let reply = control(
                &args.data_dir,
                control::Request::EnrollAdd {
                    public_key: args.public_key,
                    area: args.area,
                    name: args.name,
                },
            )?;
            let control::Reply::Enrolled { node } = reply else {
                bail!("unexpected answer from the node: {reply:?}");
            };
            println!("enrolled node {} for area {}", node.node_id, node.area);
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(args) => {
            let dir = DataDir::new(&args.data_dir);
            let config = Config::load_from_process(config_path(&dir, None).as_deref())?;
            let report = runtime()?.block_on(node::restore(
                &dir,
                &args.from,
                args.key.as_deref(),
                &config.store,
            ))?;
            println!(
                "restored node {} ({} records) from {} into {}",
                report.node_id,
                report.documents,
                args.from.display(),
                dir.root().display()
            );
            if let Some(previous) = report.previous {
                println!("the database it replaced is kept at {}", previous.display());
            }
            println!(
                "the restored node writes with a new actor id; sessions from before were cleared"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Create(args)) => {
            let reply = control(
                &args.data_dir,
                control::Request::TokenCreate {
                    username: args.user,
                    name: args.name,
                },
            )?;
            let control::Reply::Token { token, user, .. } = reply else {
                bail!("unexpected answer from the node: {reply:?}");
            };
            // The token alone on stdout, so scripts can capture it; the advice goes to stderr.
            eprintln!("token for {user} (shown once; store it in the script's secret store):");
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tls(TlsCommand::Show(args)) => {
            let dir = DataDir::new(&args.data_dir);
            dir.ensure_exists()?;
            let config = Config::load_from_process(config_path(&dir, args.config).as_deref())?;
            match crate::tls::certs::load(dir.root())? {
                Some(certs) => {
                    print!("{}", crate::tls::describe(&certs, config.http.https_listen));
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    println!(
                        "no LAN certificate yet in {}: the node makes one when it starts (or run `township-node tls renew --data-dir {}`)",
                        dir.root().display(),
                        dir.root().display()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Tls(TlsCommand::Renew(args)) => {
            let reply = control(
                &args.data_dir,
                control::Request::TlsRenew {
                    new_ca: args.new_ca,
                },
            )?;
            let control::Reply::Tls { shown } = reply else {
                bail!("unexpected answer from the node: {reply:?}");
            };
            print!("{shown}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild(args) => {
            let reply = control(&args.data_dir, control::Request::Rebuild)?;
            let control::Reply::Rebuilt { documents, millis } = reply else {
                bail!("unexpected answer from the node: {reply:?}");
            };
            println!("rebuilt projections from {documents} documents in {millis} ms");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            let dir = DataDir::new(&args.data_dir);
            dir.ensure_exists()?;
            let key = township_sync::NodeKey::load_file(&dir.key())?;
            let conn = store::open_read_only(&dir.db(), &Default::default())?;
            match crate::audit::verify::verify(&conn, &key.public_key()) {
                Ok(report) => {
                    println!(
                        "audit chain intact: {} entries, {} signed checkpoints, {} entries after the last checkpoint",
                        report.entries, report.checkpoints, report.unsigned_tail
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(crate::audit::verify::VerifyError::Broken { seq, reason }) => {
                    eprintln!("audit chain BROKEN at sequence {seq}: {reason}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Reads a password from the first line of a file, or generates one. Returns whether it was generated.
fn password_from(file: Option<&Path>) -> Result<(String, bool)> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read password file {}", path.display()))?;
            let first = text.lines().next().unwrap_or("").to_string();
            crate::auth::password::check_policy(&first)
                .with_context(|| format!("password in {}", path.display()))?;
            Ok((first, false))
        }
        None => Ok((
            crate::auth::password::generate().context("cannot generate a password")?,
            true,
        )),
    }
}

fn hash_password(password: &str, iterations: u32) -> Result<String> {
    crate::auth::password::hash(password, iterations).context("cannot hash the password")
}

/// Runs a control request: through the running node's socket if it is up, otherwise against the
/// data directory directly (taking its lock), with the same code either way.
fn control(data_dir: &Path, request: control::Request) -> Result<control::Reply> {
    let dir = DataDir::new(data_dir);
    dir.ensure_exists()?;
    runtime()?.block_on(async {
        if let Some(result) = control::call(dir.root(), &request)
            .await
            .map_err(anyhow::Error::msg)?
        {
            return Ok(result);
        }
        let config = Config::load_from_process(config_path(&dir, None).as_deref())?;
        let opened = app::open_for_command(&dir, config).await?;
        let uid = rustix::process::getuid().as_raw();
        let result = control::execute(&opened.state, request, Some(uid)).await;
        app::finish(&opened.state, Duration::from_secs(5)).await;
        Ok(result?)
    })
}

fn demo_request(admin_password_hash: String) -> Result<InitRequest> {
    Ok(InitRequest {
        area: "330723001".parse()?,
        role: NodeRole::Township,
        name: "熟溪街道（演示）".into(),
        admin_password_hash,
        upstream: None,
    })
}

/// Opens the node, serves until a signal, and shuts down in order. `demo` prints where to look.
async fn serve(dir: &DataDir, config: Config, demo: bool) -> Result<()> {
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
    let https = match (state.config.http.https_listen, state.tls.get().cloned()) {
        (Some(https_listen), Some(lan)) => {
            let https_listener = match tokio::net::TcpListener::bind(https_listen).await {
                Ok(l) => l,
                Err(e) => {
                    app::finish(&state, Duration::from_secs(1)).await;
                    bail!(
                        "cannot listen for HTTPS on {https_listen}: {e} (set [http] https_listen to a free address, or \"off\")"
                    );
                }
            };
            let https_addr = https_listener
                .local_addr()
                .context("HTTPS listener has no local address")?;
            lan.set_port(https_addr.port());
            tracing::info!(ca_sha256 = %lan.certs().ca_fingerprint(), "listening on https://{https_addr}");
            let tls_config = crate::tls::serve::server_config(lan.slot.clone())
                .context("cannot configure TLS")?;
            Some(tokio::spawn(crate::tls::serve::run_https(
                https_listener,
                crate::http::app(state.clone()),
                tls_config,
                state.shutdown.clone(),
                grace,
            )))
        }
        _ => None,
    };
    if demo {
        let shown = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        println!(
            "township-node demo is running: open http://{shown}/ in a browser (Ctrl+C to stop)"
        );
        if let Some(lan) = state.lan_tls()
            && let Some(port) = lan.port()
        {
            println!(
                "  phones on the LAN: open http://<this machine's address>:{}/ca to trust the node's certificate, then https://<address>:{port}/",
                addr.port()
            );
        }
        let simulated = state
            .config
            .devices
            .iter()
            .filter(|d| d.driver() == crate::telemetry::config::DriverKind::Simulator)
            .count();
        if simulated > 0 {
            println!(
                "  {simulated} simulated stations report on the sensors page; a scripted storm starts about {} minutes in",
                state
                    .config
                    .simulator
                    .storm_after
                    .map_or(0.0, |d| d.as_secs_f64()
                        / state.config.simulator.speedup
                        / 60.0)
                    .round()
            );
        }
    }
    app::spawn_signal_handler(state.shutdown.clone());
    app::spawn_background(&state);
    if let Err(e) = control::spawn_server(&state, control::socket_path(dir.root())) {
        tracing::warn!(error = %e, "control socket unavailable; CLI account commands will wait for the node to stop");
    }
    let served = app::run(listener, state.clone()).await;
    if let Some(https) = https {
        state.shutdown.cancel();
        match https.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTPS server failed"),
            Err(e) => tracing::warn!(error = %e, "the HTTPS server task failed"),
        }
    }
    app::finish(&state, grace.min(Duration::from_secs(5))).await;
    drop(opened);
    served.context("the HTTP server failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn user_command(cmd: UserCommand) -> Result<ExitCode> {
    match cmd {
        UserCommand::Add(args) => {
            let (password, generated) = password_from(args.password_file.as_deref())?;
            let request = control::Request::UserAdd {
                username: args.username,
                role: args.role,
                area: args.area,
                department: args.department,
                display_name: args.display_name,
                phone: args.phone,
                password: password.clone(),
            };
            let reply = control(&args.data_dir, request)?;
            let control::Reply::User { user } = reply else {
                bail!("unexpected answer from the node: {reply:?}");
            };
            println!(
                "added {} ({}, area {})",
                user.username, user.role, user.area
            );
            if generated {
                println!("password (shown once): {password}");
            }
        }
        UserCommand::Passwd(args) => {
            let (password, generated) = password_from(args.password_file.as_deref())?;
            control(
                &args.data_dir,
                control::Request::UserPasswd {
                    username: args.username.clone(),
                    password: password.clone(),
                },
            )?;
            println!(
                "password of {} changed; their sessions were ended",
                args.username
            );
            if generated {
                println!("new password (shown once): {password}");
            }
        }
        UserCommand::Disable(args) => {
            control(
                &args.data_dir,
                control::Request::UserDisable {
                    username: args.username.clone(),
                },
            )?;
            println!(
                "{} disabled; their sessions and tokens were ended",
                args.username
            );
        }
        UserCommand::List(args) => {
            let reply = control(&args.data_dir, control::Request::UserList)?;
            let control::Reply::Users { users } = reply else {
                bail!("unexpected answer from the node: {reply:?}");
            };
            if args.json {
                println!("{}", serde_json::to_string(&users)?);
            } else {
                println!(
                    "USERNAME                 ROLE             AREA           DEPARTMENT     STATE"
                );
                for u in &users {
                    println!(
                        "{:<24} {:<16} {:<14} {:<14} {}",
                        u.username,
                        u.role,
                        u.area,
                        u.department.as_deref().unwrap_or("-"),
                        if u.disabled {
                            "disabled"
                        } else if u.local {
                            "local"
                        } else {
                            "active"
                        }
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
