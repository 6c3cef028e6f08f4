//! deploy/kubernetes/ cannot be applied here (no cluster), so this checks the manifests
//! against the binary they run: every file parses; each workload runs a role of the
//! service in the image the kustomization names; every environment variable it sets
//! (inline, from the ConfigMap, or added by a component's patch) is a setting of that
//! role in `hitl-orchestrator <role> --help`, or a telemetry variable
//! docs/OBSERVABILITY.md names, and the values pass the binary's own start-up checks;
//! probes ask routes of `api::ROUTES` on the port LISTEN_ADDR opens; the grace period
//! outlasts HITL_SHUTDOWN_GRACE; Secrets and the files settings point at line up; and
//! the worker autoscaler scales on a metric the service exports, through the adapter
//! rule shipped beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use hitl_orchestrator::config::{Cli, Command as CliCommand, Role};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every YAML document of `path` (manifests hold several, separated by `---`).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn one_document(path: &Path) -> Value {
    let mut docs = documents(path);
    assert_eq!(docs.len(), 1, "{} holds one document", path.display());
    docs.remove(0)
}

/// Every `.yaml` file under deploy/kubernetes/.
fn yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn kustomization() -> Value {
    one_document(&dir().join("kustomization.yaml"))
}

/// The objects the base applies: every document of the files its kustomization lists.
fn base() -> Vec<Value> {
    kustomization()["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .flat_map(|file| documents(&dir().join(file.as_str().unwrap())))
        .collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().expect("metadata.name")
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().expect("kind")
}

/// Deployments and Jobs: the objects that run the binary.
fn workloads(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "Job"))
        .collect()
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container(workload: &Value) -> &Value {
    let containers = pod_spec(workload)["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "{}: one container", name(workload));
    &containers[0]
}

fn seq(value: &Value) -> Vec<Value> {
    value.as_sequence().cloned().unwrap_or_default()
}

/// What `hitl-orchestrator <args>` prints; the environment is cleared so that no
/// variable of the test's own shows up as a value in the help.
fn binary_output(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hitl-orchestrator"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands the binary lists.
fn commands() -> BTreeSet<String> {
    let help = binary_output(&["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A role's settings from its `--help`: environment variable → flag.
fn settings(role: &str) -> BTreeMap<String, String> {
    let help = binary_output(&[role, "--help"]);
    let mut flag = None;
    let mut settings = BTreeMap::new();
    for line in help.lines() {
        let line = line.trim();
        // An option's line starts with its flag (`--name`, or `-n, --name`).
        if line.starts_with('-')
            && let Some(option) = line.split_whitespace().find(|w| w.starts_with("--"))
        {
            flag = Some(option.trim_end_matches(',').to_owned());
        }
        if let Some(rest) = line.strip_prefix("[env: ") {
            let var: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            settings.insert(var, flag.clone().expect("a flag before its [env: …]"));
        }
    }
    assert!(settings.contains_key("DATABASE_URL"), "{role}: {help}");
    settings
}

/// Variables read outside the command line (tracing's filter, the OpenTelemetry SDK),
/// allowed only when docs/OBSERVABILITY.md names them.
fn telemetry_variable(var: &str) -> bool {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OBSERVABILITY.md"),
    )
    .unwrap();
    (var == "RUST_LOG" || var.starts_with("OTEL_")) && doc.contains(var)
}

/// A workload's role: the first argument of its container (the image's entrypoint is
/// the binary).
fn role(workload: &Value) -> String {
    let c = container(workload);
    let args = c["args"].as_sequence().or(c["command"].as_sequence());
    args.and_then(|a| a.first())
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{}: no role in args", name(workload)))
        .to_owned()
}

/// The JSON patches of every component that target `workload`, with the patch's file.
fn component_patches(workload: &Value) -> Vec<(PathBuf, Vec<Value>)> {
    let mut patches = Vec::new();
    for file in yaml_files() {
        if file.file_name().unwrap() != "kustomization.yaml" {
            continue;
        }
        let k = one_document(&file);
        if k["kind"].as_str() != Some("Component") {
            continue;
        }
        for patch in seq(&k["patches"]) {
            let target = &patch["target"];
            if target["kind"].as_str() != Some(kind(workload)) {
                continue;
            }
            let selected = target["labelSelector"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .all(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    workload["metadata"]["labels"][k].as_str() == Some(v)
                });
            let named = target["name"].as_str().is_none_or(|n| n == name(workload));
            if selected && named {
                let path = file.parent().unwrap().join(patch["path"].as_str().unwrap());
                patches.push((path.clone(), seq(&one_document(&path))));
            }
        }
    }
    patches
}

/// The values a patch appends to `…/<list>/-`.
fn appended<'a>(ops: &'a [Value], list: &str) -> Vec<&'a Value> {
    ops.iter()
        .filter(|op| {
            op["op"].as_str() == Some("add")
                && op["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("/{list}/-")))
        })
        .map(|op| &op["value"])
        .collect()
}

/// Every variable a workload's container gets, with its literal value when it has one:
/// the ConfigMaps it reads, its own `env`, then what components append.
fn environment(objects: &[Value], workload: &Value) -> BTreeMap<String, Option<String>> {
    let c = container(workload);
    let mut env = BTreeMap::new();
    for from in seq(&c["envFrom"]) {
        let map = from["configMapRef"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: envFrom only from ConfigMaps", name(workload)));
        let config = objects
            .iter()
            .find(|o| kind(o) == "ConfigMap" && name(o) == map)
            .unwrap_or_else(|| panic!("{}: ConfigMap {map} is in the base", name(workload)));
        for (k, v) in config["data"].as_mapping().unwrap() {
            env.insert(
                k.as_str().unwrap().to_owned(),
                v.as_str().map(str::to_owned),
            );
        }
    }
    let patched: Vec<Value> = component_patches(workload)
        .into_iter()
        .flat_map(|(_, ops)| {
            appended(&ops, "env")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    for var in seq(&c["env"]).iter().chain(&patched) {
        env.insert(
            var["name"].as_str().unwrap().to_owned(),
            var["value"].as_str().map(str::to_owned),
        );
    }
    env
}

/// The command line the binary would see for `workload`: its role and, as flags, each
/// setting with a literal value (values from Secrets are left to their defaults).
fn parse_as_the_binary(objects: &[Value], workload: &Value) -> Cli {
    let role = role(workload);
    let flags = settings(&role);
    let mut argv = vec!["hitl-orchestrator".to_owned(), role.clone()];
    for (var, value) in environment(objects, workload) {
        if let (Some(flag), Some(value)) = (flags.get(&var), value) {
            argv.push(format!("{flag}={value}"));
        }
    }
    let cli = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{}: {argv:?} does not parse: {e}", name(workload)));
    cli.validate()
        .unwrap_or_else(|e| panic!("{}: {argv:?} is refused at start: {e}", name(workload)));
    cli
}

fn the_role(cli: &Cli) -> &Role {
    match &cli.command {
        CliCommand::Role(role) => role,
        _ => panic!("not a role"),
    }
}

/// Resolves a probe's or Service's port (a number or a container port's name).
fn container_port(workload: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let wanted = port.as_str().unwrap();
    seq(&container(workload)["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(wanted))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("{}: no container port named {wanted}", name(workload)))
        as u16
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_every_file_of_the_base() {
    for file in yaml_files() {
        assert!(
            !documents(&file).is_empty(),
            "{} has a document",
            file.display()
        );
    }
    let listed: BTreeSet<String> = seq(&kustomization()["resources"])
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    // Everything at the top level but the kustomization itself and the example Secrets
    // (placeholders that must never be applied by accident) belongs to the base.
    let top: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml"))
        .filter(|f| f != "kustomization.yaml" && f != "secrets.example.yaml")
        .collect();
    assert_eq!(listed, top);
    for object in base() {
        assert!(object["apiVersion"].as_str().is_some(), "{object:?}");
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
            Some("hitl-orchestrator"),
            "{} {} carries the app's label",
            kind(&object),
            name(&object)
        );
    }
}

#[test]
fn each_workload_runs_the_service_role_it_is_named_for_in_the_image_the_kustomization_sets() {
    let objects = base();
    let commands = commands();
    let images: Vec<String> = seq(&kustomization()["images"])
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    let mut roles = BTreeSet::new();
    for w in workloads(&objects) {
        let role = role(w);
        assert!(
            commands.contains(&role),
            "{}: {role} is not a command of the binary",
            name(w)
        );
        // A role of the service, not one of the operator's client commands.
        assert!(settings(&role).contains_key("DATABASE_URL"), "{role}");
        let component = w["metadata"]["labels"]["app.kubernetes.io/component"].as_str();
        assert_eq!(component, Some(role.as_str()), "{}", name(w));
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/component"].as_str(),
            Some(role.as_str())
        );
        if kind(w) == "Deployment" {
            assert!(
                labels_match(&w["spec"]["selector"]["matchLabels"], labels),
                "{}",
                name(w)
            );
        }
        let image = container(w)["image"].as_str().unwrap();
        assert!(
            images.iter().any(|i| i == image),
            "{}: image {image} is set by the kustomization",
            name(w)
        );
        roles.insert(role);
    }
    assert_eq!(
        roles,
        ["api", "migrate", "worker"].map(str::to_owned).into(),
        "the API, the workers and the migration each run"
    );
}

#[test]
fn every_environment_variable_a_workload_sets_is_a_setting_of_its_role_and_passes_its_checks() {
    let objects = base();
    let mut unknown = Vec::new();
    for w in workloads(&objects) {
        let known = settings(&role(w));
        for var in environment(&objects, w).keys() {
            if !known.contains_key(var) && !telemetry_variable(var) {
                unknown.push(format!("{}: {var}", name(w)));
            }
        }
        parse_as_the_binary(&objects, w);
    }
    assert!(unknown.is_empty(), "not settings of the role: {unknown:#?}");
}

#[test]
fn probes_ask_routes_the_router_serves_on_the_port_listen_addr_opens() {
    let objects = base();
    let routes: BTreeSet<&str> = hitl_orchestrator::api::ROUTES
        .iter()
        .filter(|(method, _)| *method == "GET")
        .map(|(_, path)| *path)
        .collect();
    for w in workloads(&objects) {
        let cli = parse_as_the_binary(&objects, w);
        let c = container(w);
        let probes = ["startupProbe", "readinessProbe", "livenessProbe"];
        let Role::Api(args) = the_role(&cli) else {
            // No HTTP in this role: nothing may point at a port it does not open.
            assert!(
                c["ports"].is_null(),
                "{}: a role without HTTP declares no ports",
                name(w)
            );
            for p in probes {
                assert!(c[p].is_null(), "{}: {p} on a role without HTTP", name(w));
            }
            continue;
        };
        let listen = args.http.listen_addr;
        assert!(
            listen.ip().is_unspecified(),
            "{}: LISTEN_ADDR {listen} is not reachable from the kubelet or the Service",
            name(w)
        );
        for p in probes {
            let get = &c[p]["httpGet"];
            let path = get["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: {p}", name(w)));
            assert!(
                routes.contains(path),
                "{}: {p} asks {path}, which is no route",
                name(w)
            );
            assert_eq!(
                container_port(w, &get["port"]),
                listen.port(),
                "{}: {p}",
                name(w)
            );
        }
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
        let annotations = &w["spec"]["template"]["metadata"]["annotations"];
        let scraped = annotations["prometheus.io/path"].as_str().unwrap();
        assert!(routes.contains(scraped), "{scraped}");
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(listen.port().to_string().as_str())
        );

        let labels = &w["spec"]["template"]["metadata"]["labels"];
        let services: Vec<&Value> = objects
            .iter()
            .filter(|o| kind(o) == "Service" && labels_match(&o["spec"]["selector"], labels))
            .collect();
        assert_eq!(
            services.len(),
            1,
            "{}: one Service selects its pods",
            name(w)
        );
        for port in seq(&services[0]["spec"]["ports"]) {
            assert_eq!(container_port(w, &port["targetPort"]), listen.port());
        }
    }
}

#[test]
fn the_grace_period_outlasts_the_shutdown_grace_and_the_pre_stop_pause() {
    let objects = base();
    for w in workloads(&objects) {
        let cli = parse_as_the_binary(&objects, w);
        let grace = the_role(&cli).common().shutdown_grace.0;
        let pre_stop = seq(&container(w)["lifecycle"]["preStop"]["exec"]["command"]);
        let pause = match pre_stop.as_slice() {
            [] => 0,
            [sleep, seconds] if sleep.as_str() == Some("sleep") => {
                seconds.as_str().unwrap().parse::<u64>().unwrap()
            }
            other => panic!("{}: a preStop this test cannot time: {other:?}", name(w)),
        };
        let period = pod_spec(w)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: terminationGracePeriodSeconds is set", name(w)));
        assert!(
            period > grace.as_secs() + pause,
            "{}: {period} s for a {pause} s preStop and a {grace:?} shutdown grace",
            name(w)
        );
    }
}

#[test]
fn secrets_and_the_files_that_settings_point_at_line_up() {
    let examples = documents(&dir().join("secrets.example.yaml"));
    let keys = |secret: &str| -> BTreeSet<String> {
        let s = examples
            .iter()
            .find(|o| kind(o) == "Secret" && name(o) == secret)
            .unwrap_or_else(|| panic!("secrets.example.yaml shows Secret {secret}"));
        s["stringData"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    let objects = base();
    assert!(
        objects.iter().all(|o| kind(o) != "Secret"),
        "no Secret is applied by the base"
    );
    for w in workloads(&objects) {
        let c = container(w);
        for var in seq(&c["env"]) {
            let r = &var["valueFrom"]["secretKeyRef"];
            if let Some(secret) = r["name"].as_str() {
                assert!(
                    keys(secret).contains(r["key"].as_str().unwrap()),
                    "{}: {var:?}",
                    name(w)
                );
            }
        }
        // Mount path → the Secret's keys, the component's mounts and volumes included.
        let patches = component_patches(w);
        let volumes: Vec<Value> = seq(&pod_spec(w)["volumes"])
            .into_iter()
            .chain(
                patches
                    .iter()
                    .flat_map(|(_, ops)| appended(ops, "volumes").into_iter().cloned()),
            )
            .collect();
        let mounts: Vec<Value> = seq(&c["volumeMounts"])
            .into_iter()
            .chain(
                patches
                    .iter()
                    .flat_map(|(_, ops)| appended(ops, "volumeMounts").into_iter().cloned()),
            )
            .collect();
        let mut files = BTreeMap::new();
        for m in &mounts {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("{}: mount {:?} has its volume", name(w), m["name"]));
            assert!(
                m["subPath"].is_null(),
                "{}: a subPath mount is never updated",
                name(w)
            );
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                files.insert(m["mountPath"].as_str().unwrap().to_owned(), keys(secret));
            }
        }
        for (var, value) in environment(&objects, w) {
            if !var.ends_with("_FILE") {
                continue;
            }
            let path = PathBuf::from(value.unwrap());
            let (dir, file) = (path.parent().unwrap(), path.file_name().unwrap());
            let in_secret = files
                .get(dir.to_str().unwrap())
                .is_some_and(|keys| keys.contains(file.to_str().unwrap()));
            assert!(
                in_secret,
                "{}: {var}={} is a key of a mounted Secret",
                name(w),
                path.display()
            );
        }
    }
}

#[test]
fn every_deployment_has_a_disruption_budget_and_the_worker_autoscaler_scales_on_an_exported_metric()
{
    let objects = base();
    for d in objects.iter().filter(|o| kind(o) == "Deployment") {
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let budgets = objects
            .iter()
            .filter(|o| kind(o) == "PodDisruptionBudget")
            .filter(|o| labels_match(&o["spec"]["selector"]["matchLabels"], labels))
            .count();
        assert_eq!(budgets, 1, "{}: one PodDisruptionBudget", name(d));
    }

    let hpa = objects
        .iter()
        .find(|o| kind(o) == "HorizontalPodAutoscaler")
        .expect("an autoscaler");
    let target = &hpa["spec"]["scaleTargetRef"];
    let scaled = objects
        .iter()
        .find(|o| {
            kind(o) == target["kind"].as_str().unwrap()
                && name(o) == target["name"].as_str().unwrap()
        })
        .expect("the autoscaler's target is in the base");
    assert_eq!(role(scaled), "worker");
    assert!(
        scaled["spec"]["replicas"].is_null(),
        "the autoscaler, not the Deployment, sets the count"
    );
    let metrics = seq(&hpa["spec"]["metrics"]);
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0]["type"].as_str(), Some("External"));
    let served = metrics[0]["external"]["metric"]["name"].as_str().unwrap();

    let adapter = one_document(&dir().join("prometheus/adapter-values.yaml"));
    let rule = seq(&adapter["rules"]["external"])
        .into_iter()
        .find(|r| r["name"]["as"].as_str() == Some(served))
        .unwrap_or_else(|| panic!("an adapter rule serves {served}"));
    let exported: BTreeMap<&str, hitl_orchestrator::telemetry::metrics::Kind> =
        hitl_orchestrator::telemetry::metrics::METRICS
            .iter()
            .map(|(n, k, _)| (*n, *k))
            .collect();
    let series = rule["seriesQuery"].as_str().unwrap();
    let metric = series.split('{').next().unwrap();
    assert_eq!(
        exported.get(metric),
        Some(&hitl_orchestrator::telemetry::metrics::Kind::Gauge),
        "{metric} is a gauge the service exports"
    );
    assert!(
        rule["metricsQuery"]
            .as_str()
            .unwrap()
            .contains("<<.Series>>")
    );
    // The queues counted are kinds the workers run, without the ones whose Pending
    // jobs wait for a time instead of for a worker.
    let query = rule["metricsQuery"].as_str().unwrap();
    let queues = query
        .split("queue=~\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the rule names its queues");
    let kinds = hitl_orchestrator::jobs::registry().kinds();
    for queue in queues.split('|') {
        assert!(kinds.contains(&queue), "{queue} is a job kind");
        assert!(
            !["hitl_expire", "hitl_cleanup"].contains(&queue),
            "{queue} waits for a time"
        );
    }
    assert!(query.contains("status=\"Pending\""), "{query}");

    // Prometheus scrapes what the rule reads: the API pods' /metrics on their named port.
    let scrape = one_document(&dir().join("prometheus/scrape-config.yaml"));
    let job = &seq(&scrape["scrape_configs"])[0];
    let path = job["metrics_path"].as_str().unwrap();
    assert!(
        hitl_orchestrator::api::ROUTES.contains(&("GET", path)),
        "{path}"
    );
    let keep = seq(&job["relabel_configs"])
        .into_iter()
        .find(|r| r["action"].as_str() == Some("keep"))
        .unwrap();
    let api = objects
        .iter()
        .find(|o| kind(o) == "Deployment" && role(o) == "api")
        .unwrap();
    let port_name = seq(&container(api)["ports"])[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        keep["regex"].as_str(),
        Some(format!("hitl-orchestrator;api;{port_name}").as_str())
    );
}
