//! Demo data for `township-node demo`: a handful of people and a few dozen realistic incidents across
//! the villages of 熟溪街道, in every state, made through the same code paths as real use (records,
//! workflow transitions, audit entries) on a clock running from ten days ago, so lists, deadlines and
//! indicators have something true to show.

use crate::app::{self, AppState};
use crate::auth::roles::Role;
use crate::clock::Clock;
use crate::config::{Config, Secret};
use crate::incidents::{self, NewIncident, TransitionRequest};
use crate::node::{DataDir, NodeError};
use crate::users::{Actor, NewUser};

const VILLAGES: [(&str, &str, f64, f64); 5] = [
    ("330723001001", "王宅村", 28.8975, 119.8123),
    ("330723001002", "上茭道村", 28.8862, 119.8241),
    ("330723001003", "下茭道村", 28.8810, 119.8302),
    ("330723001004", "新屋村", 28.9031, 119.8055),
    ("330723001005", "熟溪村", 28.8921, 119.8165),
];

/// The demo's reports: category, title, description, and the department whose work it is.
const REPORTS: [(&str, &str, &str, &str); 12] = [
    (
        "安全隐患",
        "路灯损坏不亮",
        "村口主干道三盏路灯不亮，夜间行人和电动车通行有安全隐患。",
        "housing",
    ),
    (
        "环境卫生",
        "河道垃圾堆积",
        "熟溪支流桥下垃圾堆积，有异味，需清理。",
        "environment",
    ),
    (
        "防汛防台",
        "山塘水位偏高",
        "连续降雨后山塘水位接近溢洪道，请水利部门查看。",
        "water",
    ),
    (
        "违章建筑",
        "村民私自搭建彩钢棚",
        "三组有村民在宅基地外搭建彩钢棚，影响邻居通行。",
        "enforcement",
    ),
    (
        "矛盾纠纷",
        "邻里装修噪音纠纷",
        "楼上装修噪音持续到晚上十点后，邻里争执，需调解。",
        "police",
    ),
    (
        "道路交通",
        "占道经营影响通行",
        "菜市场门口早市摊位占用机动车道。",
        "enforcement",
    ),
    (
        "消防安全",
        "楼道堆放杂物",
        "老旧小区楼道堆放纸箱和电动车，堵塞消防通道。",
        "emergency",
    ),
    (
        "食品安全",
        "小餐馆卫生问题",
        "群众反映街边小餐馆后厨卫生差，需市场监管核查。",
        "market",
    ),
    (
        "民生服务",
        "独居老人需要帮扶",
        "五组独居老人行动不便，家中漏雨，需协调帮扶。",
        "housing",
    ),
    (
        "安全隐患",
        "电线私拉乱接",
        "出租房外墙电线私拉乱接给电动车充电。",
        "emergency",
    ),
    (
        "环境卫生",
        "垃圾分类投放点满溢",
        "垃圾分类投放点清运不及时，满溢。",
        "environment",
    ),
    (
        "其他",
        "公交站牌破损",
        "站牌玻璃破损，有划伤风险。",
        "housing",
    ),
];

/// Who the demo has: username, display name, role, area, department.
const PEOPLE: [(&str, &str, Role, &str, Option<&str>); 11] = [
    ("zhang.min", "张敏", Role::TownshipStaff, "330723001", None),
    ("wang.fang", "王芳", Role::GridWorker, "330723001001", None),
    ("li.qiang", "李强", Role::GridWorker, "330723001002", None),
    (
        "zhao.lei",
        "赵磊",
        Role::DeptHandler,
        "330723001",
        Some("water"),
    ),
    (
        "chen.jing",
        "陈静",
        Role::DeptHandler,
        "330723001",
        Some("emergency"),
    ),
    (
        "sun.hao",
        "孙浩",
        Role::DeptHandler,
        "330723001",
        Some("enforcement"),
    ),
    (
        "liu.yang",
        "刘洋",
        Role::DeptHandler,
        "330723001",
        Some("housing"),
    ),
    (
        "he.li",
        "何丽",
        Role::DeptHandler,
        "330723001",
        Some("environment"),
    ),
    (
        "qian.wei",
        "钱伟",
        Role::DeptHandler,
        "330723001",
        Some("market"),
    ),
    (
        "wu.gang",
        "吴刚",
        Role::DeptHandler,
        "330723001",
        Some("police"),
    ),
    ("it.zhou", "周工", Role::CountyIt, "330723001", None),
];

/// The real names of the county, the township and its villages, for the area directory.
pub fn add_area_names(config: &mut Config) {
    let mut names = vec![("330723", "武义县"), ("330723001", "熟溪街道")];
    names.extend(VILLAGES.iter().map(|(code, name, _, _)| (*code, *name)));
    for (code, name) in names {
        if !config.areas.iter().any(|a| a.code == code) {
            config.areas.push(crate::config::AreaConfig {
                code: code.into(),
                name: name.into(),
                polygon: None,
                circle: None,
            });
        }
    }
}

/// A person of the demo, acting directly through the domain functions (no session or token needed).
fn person(
    username: &str,
    role: Role,
    area: &str,
    department: Option<&str>,
) -> Result<Actor, String> {
    let area = area
        .parse()
        .map_err(|e: township_sync::AreaError| e.to_string())?;
    Ok(Actor::person(username, role, area).with_department(department.map(String::from)))
}

/// Simulated stations for the demo: a rain gauge and a river gauge in one catchment, a second river
/// gauge in a village, and an air station. Simulated time runs 30 times faster than real time, and a
/// scripted storm starts after about two minutes, so the river visibly rises while a newcomer watches.
pub fn add_stations(config: &mut Config) {
    let station = |id: &str, name: &str, area: &str, profile: &str, catchment: &str| {
        crate::telemetry::config::DeviceConfig {
            id: id.into(),
            name: name.into(),
            area: area.into(),
            interval: Some(std::time::Duration::from_secs(5)),
            points: Vec::new(),
            link: crate::telemetry::config::DeviceLink::Simulator(
                crate::telemetry::config::SimulatorLink {
                    profile: profile.into(),
                    catchment: Some(catchment.into()),
                },
            ),
        }
    };
    config.devices = vec![
        station(
            "rain-shuxi",
            "熟溪雨量站（模拟）",
            "330723001",
            "rain",
            "shuxi",
        ),
        station(
            "wl-shuxi",
            "熟溪水位站（模拟）",
            "330723001",
            "river",
            "shuxi",
        ),
        station(
            "wl-wangzhai",
            "王宅村水位站（模拟）",
            "330723001001",
            "river",
            "wangzhai",
        ),
        station(
            "aq-county",
            "县城空气站（模拟）",
            "330723001",
            "air",
            "shuxi",
        ),
    ];
    config.simulator.speedup = 30.0;
    config.simulator.storm_after = Some(std::time::Duration::from_secs(3600));
    config.simulator.storm_for = std::time::Duration::from_secs(3 * 3600);
    config.simulator.storm_peak = 45.0;
}

/// Loudspeakers for the demo: 王宅村 and the township hall each a zone whose "amplifier" keeps every
/// broadcast it plays as a WAV under `<data dir>/loudspeakers/<zone>/` (so a newcomer without a sound
/// card can listen afterwards; with `aplay` installed the township hall also plays aloud), and a
/// monitor output in the office, the only place a test broadcast reaches.
pub fn add_loudspeakers(config: &mut Config, data_dir: &std::path::Path) {
    use crate::pa::config::{CommandOutput, Output, Zone};
    let keep = |zone: &str| {
        let dir = data_dir.join("loudspeakers").join(zone);
        vec![
            "sh".to_string(),
            "-c".into(),
            "mkdir -p \"$1\" && cp \"$2\" \"$1/$(date +%Y%m%d-%H%M%S)-$$.wav\" && sleep 2".into(),
            "sh".into(),
            dir.display().to_string(),
            "{file}".into(),
        ]
    };
    let aloud = std::process::Command::new("aplay")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let hall = if aloud {
        vec!["aplay".to_string(), "-q".into(), "{file}".into()]
    } else {
        keep("hall")
    };
    config.pa.outputs = vec![
        Output::AudioCommand(CommandOutput {
            id: "amp-wangzhai".into(),
            command: keep("wangzhai"),
            test: false,
        }),
        Output::AudioCommand(CommandOutput {
            id: "amp-hall".into(),
            command: hall,
            test: false,
        }),
        Output::AudioCommand(CommandOutput {
            id: "office-monitor".into(),
            command: keep("office-monitor"),
            test: true,
        }),
    ];
    config.pa.zones = vec![
        Zone {
            id: "wangzhai".into(),
            name: "王宅村".into(),
            area: "330723001001".into(),
            outputs: vec!["amp-wangzhai".into(), "office-monitor".into()],
        },
        Zone {
            id: "hall".into(),
            name: "熟溪街道办".into(),
            area: "330723001".into(),
            outputs: vec!["amp-hall".into(), "office-monitor".into()],
        },
    ];
}

/// The township hall's IP loudspeaker for the demo: an `mqtt_speaker` on the embedded broker
/// (127.0.0.1:18830 unless `[mqtt] listen` says otherwise) whose password is made once and kept in
/// the data directory. Returns the command that runs the reference speaker against it, or `None`
/// when the configuration already has its own loudspeakers.
pub fn add_speaker(
    config: &mut Config,
    data_dir: &std::path::Path,
) -> Result<Option<String>, NodeError> {
    use crate::pa::config::{Output, SpeakerOutput};
    if !config.pa.zones.iter().any(|z| z.id == "hall") {
        return Ok(None);
    }
    let io = |source| NodeError::Io {
        path: data_dir.to_path_buf(),
        source,
    };
    let file = data_dir.join("speaker-hall.pw");
    if !file.exists() {
        let mut secret = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(
            |_| {
                io(std::io::Error::other(
                    "no randomness for the speaker's password",
                ))
            },
        )?;
        std::fs::write(&file, format!("{}\n", hex::encode(secret))).map_err(io)?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io)?;
    }
    let listen = *config
        .mqtt
        .listen
        .get_or_insert_with(|| std::net::SocketAddr::from(([127, 0, 0, 1], 18830)));
    config.pa.outputs.push(Output::MqttSpeaker(SpeakerOutput {
        id: "spk-hall".into(),
        username: "spk-hall".into(),
        password_file: file.clone(),
        test: false,
    }));
    if let Some(hall) = config.pa.zones.iter_mut().find(|z| z.id == "hall") {
        hall.outputs.push("spk-hall".into());
    }
    Ok(Some(format!(
        "python3 tests/interop/pa_speaker.py --id spk-hall --host {} --port {} --username spk-hall --password-file {} --http http://{} --player 'aplay -q {{file}}'",
        listen.ip(),
        listen.port(),
        file.display(),
        config.http.listen
    )))
}

pub async fn seed(dir: &DataDir, config: Config, password: &str) -> Result<usize, NodeError> {
    let now = crate::clock::system_now_ms();
    let clock = Clock::manual(now - 10 * 24 * 3600 * 1000);
    let opened = app::open_with_clock(dir, config, clock.clone()).await?;
    let state = opened.state.clone();
    let result = seed_into(&state, &clock, password).await;
    app::finish(&state, std::time::Duration::from_secs(5)).await;
    drop(opened);
    result.map_err(|e| NodeError::Io {
        path: dir.root().to_path_buf(),
        source: std::io::Error::other(e),
    })
}

/// Creates the demo people (all with `password`) and incidents. Returns how many incidents.
async fn seed_into(state: &AppState, clock: &Clock, password: &str) -> Result<usize, String> {
    let cli = Actor::person("demo", Role::Admin, state.node.area.clone());
    for (username, name, role, area, dept) in PEOPLE {
        let new = NewUser {
            username: username.into(),
            role,
            area: area
                .parse()
                .map_err(|e: township_sync::AreaError| e.to_string())?,
            department: dept.map(String::from),
            display_name: Some(name.into()),
            phone: None,
            password: Secret::new(password),
        };
        crate::users::accounts::add(
            &state.store,
            state.write_ctx(),
            &state.hasher,
            cli.clone(),
            new,
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let staff = person("zhang.min", Role::TownshipStaff, "330723001", None)?;
    // Each case goes to the handler of the department whose work it is.
    let handler_of = |department: &str| -> Result<Actor, String> {
        let (username, ..) = PEOPLE
            .iter()
            .find(|p| p.4 == Some(department))
            .ok_or_else(|| format!("the demo has no handler for {department}"))?;
        person(username, Role::DeptHandler, "330723001", Some(department))
    };
    let mut made: Vec<uuid::Uuid> = Vec::new();
    let total = 36;
    for n in 0..total {
        let (village, _, lat, lon) = VILLAGES[n % VILLAGES.len()];
        let (category, title, description, department) = REPORTS[n % REPORTS.len()];
        // Grid workers report in their own villages; the township staff report the rest.
        let reporter = match village {
            "330723001001" => person("wang.fang", Role::GridWorker, village, None)?,
            "330723001002" => person("li.qiang", Role::GridWorker, village, None)?,
            _ => staff.clone(),
        };
        let jitter = ((n * 37) % 100) as f64 / 10_000.0;
        let new = NewIncident {
            id: None,
            category: category.into(),
            title: title.into(),
            description: description.into(),
            area: village
                .parse()
                .map_err(|e: township_sync::AreaError| e.to_string())?,
            location: (n % 4 != 3).then_some((lat + jitter, lon - jitter)),
            place: Some(format!("{}附近", VILLAGES[n % VILLAGES.len()].1)),
        };
        let ctx = state.write_ctx();
        let who = reporter.clone();
        let id = state
            .store
            .write(move |conn| incidents::create(conn, &ctx, &who, new))
            .await
            .map_err(|e| e.to_string())?;
        clock.advance_ms(20 * 60 * 1000 + (n as i64 % 5) * 7 * 60 * 1000);

        // Walk each incident some way along the loop: the older ones further.
        made.push(id);
        let handler = &handler_of(department)?;
        let department = department.to_string();
        // The same report twelve cases earlier is the original this one duplicates.
        let original = n
            .checked_sub(REPORTS.len())
            .and_then(|i| made.get(i))
            .copied();
        let steps: Vec<(&Actor, &str, Option<&str>)> = match n % 9 {
            0 => vec![],
            1 => vec![(&staff, "accept", None)],
            2 => vec![(
                &staff,
                "reject",
                Some("不属于本街道职责范围，已告知群众向县级部门反映"),
            )],
            3 | 4 => vec![(&staff, "accept", None), (&staff, "dispatch", None)],
            5 => vec![
                (&staff, "accept", None),
                (&staff, "dispatch", None),
                (handler, "start", None),
            ],
            6 => vec![
                (&staff, "accept", None),
                (&staff, "dispatch", None),
                (handler, "start", None),
                (handler, "resolve", Some("已现场处置完毕")),
            ],
            // This node has no level above (the demo runs alone), so nothing is escalated: the
            // repeated reports are closed as duplicates of their originals instead.
            7 if original.is_some() => vec![(&staff, "duplicate", None)],
            7 => vec![(&staff, "accept", None)],
            _ => vec![
                (&staff, "accept", None),
                (&staff, "dispatch", None),
                (handler, "start", None),
                (handler, "resolve", Some("已处置，群众认可")),
                (&reporter, "verify", None),
            ],
        };
        for (who, action, note) in steps {
            let request = TransitionRequest {
                action: action.into(),
                note: note.map(String::from),
                department: (action == "dispatch").then(|| department.clone()),
                assist_departments: if action == "dispatch"
                    && n % 3 == 0
                    && department != "emergency"
                {
                    vec!["emergency".into()]
                } else {
                    vec![]
                },
                deadline_ms: None,
                duplicate_of: (action == "duplicate")
                    .then(|| original.map(|o| o.to_string()))
                    .flatten(),
            };
            let (ctx, config, who) = (state.write_ctx(), state.config.clone(), who.clone());
            state
                .store
                .write(move |conn| incidents::transition(conn, &ctx, &config, &who, id, request))
                .await
                .map_err(|e| e.to_string())?;
            clock.advance_ms(35 * 60 * 1000);
        }
        if n % 9 == 8 && n % 2 == 0 {
            let (ctx, who) = (state.write_ctx(), reporter.clone());
            state
                .store
                .write(move |conn| {
                    incidents::rate(
                        conn,
                        &ctx,
                        &who,
                        id,
                        4 + (n as i64 % 2),
                        Some("处理及时".into()),
                    )
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        if n % 6 == 1 {
            let (ctx, who) = (state.write_ctx(), staff.clone());
            state
                .store
                .write(move |conn| {
                    incidents::comment(conn, &ctx, &who, id, "已联系村干部现场核实。")
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        clock.advance_ms(3 * 3600 * 1000);
    }
    seed_rules(state, &staff).await?;
    Ok(total)
}

/// Rules on the simulated stations, tuned to the scripted storm: the river gauge at the township
/// goes yellow and then orange a few minutes in (orange is issued at once and reaches the PA), the
/// rain gauge's sum follows (ten real minutes are five simulated hours at the demo's speed-up), and a
/// silent river gauge is a stale alarm. Everything clears after the storm.
async fn seed_rules(state: &AppState, staff: &Actor) -> Result<(), String> {
    let rules = [
        serde_json::json!({"name": "熟溪水位", "area": "330723001", "device": "wl-shuxi", "metric": "water_level",
            "kind": "threshold", "op": ">=", "levels": {"blue": 2.4, "yellow": 2.8, "orange": 3.2, "red": 4.5},
            "for": "10s", "hysteresis": 0.05, "clear_after": "30s",
            "event": "flood", "auto_issue": ["red", "orange"],
            "auto_broadcast": ["red", "orange"], "broadcast_zones": ["330723001001"],
            "broadcast_message": "{rule}{level}预警：熟溪水位上涨，请沿河低洼地带居民立即转移到安全地点。",
            "enabled": true}),
        serde_json::json!({"name": "熟溪流域累计雨量", "area": "330723001", "device": "rain-shuxi", "metric": "rainfall",
            "kind": "rolling_sum", "window": "10m", "levels": {"yellow": 30.0, "orange": 50.0},
            "event": "rainstorm", "auto_issue": ["orange"], "enabled": true}),
        serde_json::json!({"name": "王宅村水位站断线", "area": "330723001001", "device": "wl-wangzhai",
            "metric": "water_level", "kind": "stale", "after": "2m", "event": "flood", "enabled": true}),
    ];
    for body in rules {
        let body: crate::rules::spec::RuleBody =
            serde_json::from_value(body).map_err(|e| e.to_string())?;
        let (ctx, who) = (state.write_ctx(), staff.clone());
        state
            .store
            .write(move |conn| crate::rules::record::create(conn, &ctx, &who, body))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
