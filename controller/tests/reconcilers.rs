//! The key lifecycle reconcilers against a scripted API server: each scenario lists the requests
//! the controller must make, in order, answers them, and checks what it wrote.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cryptvol::header::VolumeHeader;
use cryptvol::kms::config::{KmsConfig, KmsRegistry};
use cryptvol::kms::local::{arn_of, KeyFile};
use cryptvol::kms::Secrets;
use cryptvol::volume::BackingStore;
use cryptvol_controller::crd::EncryptionKeyRotation;
use cryptvol_controller::{keystate, rotation, schedule, Context, Settings};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request: method, path (and query parameters that must be present), and the answer.
struct Expect {
    method: Method,
    path: String,
    answer: Value,
}

fn expect(method: Method, path: &str, answer: Value) -> Expect {
    Expect { method, path: path.to_string(), answer }
}

/// Serves `script` in order and returns the body of every request (JSON, or Null when empty).
async fn serve(mut handle: Handle, script: Vec<Expect>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for step in script {
        let (request, send) = tokio::time::timeout(Duration::from_secs(20), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {} {}", step.method, step.path))
            .unwrap_or_else(|| panic!("the client went away; expected {} {}", step.method, step.path));
        let seen = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        assert_eq!(request.method(), step.method, "request {seen}");
        // The path must match; each query parameter the step names must be present.
        let (path, query) = step.path.split_once('?').unwrap_or((&step.path, ""));
        assert_eq!(request.uri().path(), path, "expected {} {}, got {seen}", step.method, step.path);
        let params: Vec<&str> = request.uri().query().unwrap_or("").split('&').collect();
        for wanted in query.split('&').filter(|p| !p.is_empty()) {
            assert!(params.contains(&wanted), "expected {wanted} in {seen}");
        }
        let body = request.into_body().collect_bytes().await.unwrap();
        bodies.push(if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() });
        let status = if step.method == Method::POST { 201 } else { 200 };
        // A Null answer echoes the request (creations: events, rotations).
        let answer = if step.answer.is_null() { bodies.last().unwrap() } else { &step.answer };
        let bytes = serde_json::to_vec(answer).unwrap();
        send.send_response(Response::builder().status(status).body(Body::from(bytes)).unwrap());
    }
    bodies
}

/// Fails if the client made any request (the client may be gone already: that is fine).
async fn assert_no_request(handle: &mut Handle) {
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

/// A backing store with local keys `app` and `other`, and a context on a scripted API server.
struct Fixture {
    _dir: tempfile::TempDir,
    store: BackingStore,
    kms: Arc<KmsRegistry>,
    key_file: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        std::fs::create_dir(&backing).unwrap();
        let key_file = dir.path().join("keys.json");
        KeyFile::update(&key_file, true, |f| {
            f.create_key("app")?;
            f.create_key("other")
        })
        .unwrap();
        let kms = Arc::new(
            KmsRegistry::from_config(KmsConfig::local(key_file.clone()), dir.path(), "test").unwrap(),
        );
        Fixture { store: BackingStore::new(&backing), kms, key_file, _dir: dir }
    }

    fn context(&self) -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let settings = Settings { rotation_max_attempts: 3, ..Settings::default() };
        (Arc::new(Context::new(client, self.store.clone(), self.kms.clone(), settings)), handle)
    }

    /// Provisions a volume under `key`; `sealed` as a node's first stage would leave it.
    async fn volume(&self, id: &str, key: &str, sealed: bool) -> VolumeHeader {
        let client = self.kms.client(None).unwrap();
        let wrapped = client.generate_wrapped_key(&arn_of(key), id, &Secrets::default()).await.unwrap();
        let mut header = VolumeHeader::new(id, id, &arn_of(key), "local", &wrapped, 1 << 20);
        self.store.create(&header).unwrap();
        if sealed {
            let data_key = client.decrypt(&arn_of(key), &wrapped, id, &Secrets::default()).await.unwrap();
            header.seal = Some(header.compute_seal(&data_key.derive()));
            header.write(&self.store.volume_dir(id).unwrap()).unwrap();
        }
        header
    }

    fn header(&self, id: &str) -> VolumeHeader {
        self.store.header(id).unwrap().unwrap()
    }

    fn disable(&self, key: &str, disabled: bool) {
        KeyFile::update(&self.key_file, false, |f| f.set_enabled(key, !disabled)).unwrap();
    }
}

fn pv(name: &str, driver: &str, class: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": { "name": name, "uid": format!("uid-{name}"), "annotations": annotations },
        "spec": {
            "storageClassName": class,
            "capacity": { "storage": "1Mi" },
            "accessModes": ["ReadWriteOnce"],
            "claimRef": { "kind": "PersistentVolumeClaim", "namespace": "team", "name": format!("claim-{name}"), "uid": "claim-uid" },
            "csi": { "driver": driver, "volumeHandle": name }
        }
    })
}

fn rotation_object(name: &str, spec: Value, status: Option<Value>) -> EncryptionKeyRotation {
    let mut object = json!({
        "apiVersion": "cryptvol.csi.dev/v1alpha1", "kind": "EncryptionKeyRotation",
        "metadata": { "name": name, "generation": 1, "uid": format!("uid-{name}") },
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).unwrap()
}

const STATUS: &str = "/apis/cryptvol.csi.dev/v1alpha1/encryptionkeyrotations";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[tokio::test]
async fn a_claim_rotation_rewraps_its_volume_and_reports_it() {
    let f = Fixture::new();
    let before = f.volume("pv-1", "app", true).await;
    let (ctx, handle) = f.context();
    let object = rotation_object(
        "rot-1",
        json!({ "volumes": { "persistentVolumeClaim": { "namespace": "team", "name": "data" } }, "targetKeyId": "alias/other" }),
        None,
    );
    let status_path = format!("{STATUS}/rot-1/status?force=true&fieldManager=cryptvol-controller");
    let answer = serde_json::to_value(&object).unwrap();
    let script = vec![
        expect(
            Method::GET,
            "/api/v1/namespaces/team/persistentvolumeclaims/data",
            json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "data", "namespace": "team" }, "spec": { "volumeName": "pv-1" } }),
        ),
        expect(
            Method::GET,
            "/api/v1/persistentvolumes/pv-1",
            pv("pv-1", "cryptvol.csi.dev", "gold", json!({})),
        ),
        expect(Method::PATCH, &status_path, answer.clone()),
        expect(Method::PATCH, &status_path, answer.clone()),
        expect(Method::POST, EVENTS, Value::Null),
    ];
    let api = tokio::spawn(serve(handle, script));
    let action = rotation::reconcile(Arc::new(object), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let bodies = api.await.unwrap();

    let running = &bodies[2]["status"];
    assert_eq!(bodies[2]["kind"], "EncryptionKeyRotation");
    assert_eq!(running["phase"], "Running");
    assert_eq!(running["volumes"][0]["outcome"], "Pending");
    assert_eq!(running["total"], 1);
    let done = &bodies[3]["status"];
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert_eq!((done["rotated"].clone(), done["failed"].clone()), (json!(1), json!(0)));
    let volume = &done["volumes"][0];
    assert_eq!(volume["outcome"], "Rotated");
    assert_eq!(volume["fromKeyArn"], arn_of("app"));
    assert_eq!(volume["toKeyArn"], arn_of("other"));
    assert_eq!(volume["attempts"], 1);
    let complete = done["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Complete").unwrap();
    assert_eq!((complete["status"].clone(), complete["reason"].clone()), (json!("True"), json!("Rotated")));
    assert_eq!(done["observedGeneration"], 1);
    assert_eq!(bodies[4]["reason"], "RotationSucceeded");
    assert_eq!(bodies[4]["regarding"]["kind"], "EncryptionKeyRotation");

    let after = f.header("pv-1");
    assert_eq!(after.key_arn, arn_of("other"));
    assert_ne!(after.wrapped_key, before.wrapped_key);
    assert_eq!(after.seal, before.seal);
}

#[tokio::test]
async fn a_storage_class_rotation_reports_each_volume_and_fails_on_the_unsealed_one() {
    let f = Fixture::new();
    f.volume("pv-a", "app", true).await;
    let fresh = f.volume("pv-b", "app", false).await;
    let (ctx, handle) = f.context();
    let object = rotation_object(
        "rot-sc",
        json!({ "volumes": { "storageClassName": "gold" }, "targetKeyId": "other" }),
        None,
    );
    let list = json!({ "apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {}, "items": [
        pv("pv-b", "cryptvol.csi.dev", "gold", json!({})),
        pv("pv-a", "cryptvol.csi.dev", "gold", json!({})),
        pv("pv-silver", "cryptvol.csi.dev", "silver", json!({})),
        pv("pv-ebs", "ebs.csi.aws.com", "gold", json!({})),
    ]});
    let status_path = format!("{STATUS}/rot-sc/status?force=true&fieldManager=cryptvol-controller");
    let answer = serde_json::to_value(&object).unwrap();
    let script = vec![
        expect(Method::GET, "/api/v1/persistentvolumes?", list),
        expect(Method::PATCH, &status_path, answer.clone()),
        expect(Method::PATCH, &status_path, answer.clone()),
        expect(Method::POST, EVENTS, Value::Null),
    ];
    let api = tokio::spawn(serve(handle, script));
    rotation::reconcile(Arc::new(object), ctx).await.unwrap();
    let bodies = api.await.unwrap();
    let done = &bodies[2]["status"];
    assert_eq!(done["phase"], "Failed", "{done}");
    assert_eq!(
        (done["total"].clone(), done["rotated"].clone(), done["failed"].clone()),
        (json!(2), json!(1), json!(1))
    );
    let volumes = done["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["persistentVolume"], "pv-a", "volumes are handled in name order");
    assert_eq!(volumes[0]["outcome"], "Rotated");
    assert_eq!(volumes[1]["outcome"], "Failed");
    assert!(volumes[1]["message"].as_str().unwrap().contains("never been staged"), "{}", volumes[1]);
    let failed = done["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap();
    assert_eq!(failed["status"], "True");
    assert_eq!(bodies[3]["type"], "Warning");
    assert_eq!(bodies[3]["reason"], "RotationVolumesFailed");
    assert_eq!(f.header("pv-a").key_arn, arn_of("other"));
    assert_eq!(f.header("pv-b"), fresh, "the refused volume is untouched");
}

#[tokio::test]
async fn an_invalid_spec_fails_without_touching_any_volume() {
    let f = Fixture::new();
    let (ctx, handle) = f.context();
    let object = rotation_object(
        "rot-bad",
        json!({ "volumes": { "storageClassName": "gold", "persistentVolumeName": "pv-1" } }),
        None,
    );
    let status_path = format!("{STATUS}/rot-bad/status?force=true&fieldManager=cryptvol-controller");
    let answer = serde_json::to_value(&object).unwrap();
    let script =
        vec![expect(Method::PATCH, &status_path, answer.clone()), expect(Method::POST, EVENTS, Value::Null)];
    let api = tokio::spawn(serve(handle, script));
    rotation::reconcile(Arc::new(object), ctx).await.unwrap();
    let bodies = api.await.unwrap();
    assert_eq!(bodies[0]["status"]["phase"], "Failed");
    let complete = &bodies[0]["status"]["conditions"][0];
    assert_eq!(complete["reason"], "InvalidSpec");
    assert!(complete["message"].as_str().unwrap().contains("exactly one"));
    assert_eq!(bodies[1]["reason"], "RotationInvalidSpec");
}

#[tokio::test]
async fn a_missing_claim_fails_and_an_unbound_one_waits() {
    let f = Fixture::new();
    let spec = json!({ "volumes": { "persistentVolumeClaim": { "namespace": "team", "name": "data" } } });
    let claim_path = "/api/v1/namespaces/team/persistentvolumeclaims/data";
    let status_path = format!("{STATUS}/rot-w/status?force=true&fieldManager=cryptvol-controller");
    let answer = serde_json::to_value(rotation_object("rot-w", spec.clone(), None)).unwrap();

    let (ctx, handle) = f.context();
    let unbound = json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "data", "namespace": "team" }, "spec": {} });
    let script =
        vec![expect(Method::GET, claim_path, unbound), expect(Method::PATCH, &status_path, answer.clone())];
    let api = tokio::spawn(serve(handle, script));
    let action = rotation::reconcile(Arc::new(rotation_object("rot-w", spec.clone(), None)), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(ctx.settings.rotation_retry));
    let bodies = api.await.unwrap();
    assert_eq!(bodies[1]["status"]["phase"], "Running");
    assert!(bodies[1]["status"]["conditions"][0]["message"].as_str().unwrap().contains("not bound"));

    // A missing claim: the API answers 404.
    let (ctx, mut handle) = f.context();
    let api = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request.uri().path(), claim_path);
        let status = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" });
        send.send_response(
            Response::builder().status(404).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap(),
        );
        serve(
            handle,
            vec![
                expect(Method::PATCH, &status_path, answer.clone()),
                expect(Method::POST, EVENTS, Value::Null),
            ],
        )
        .await
    });
    rotation::reconcile(Arc::new(rotation_object("rot-w", spec, None)), ctx).await.unwrap();
    let bodies = api.await.unwrap();
    assert_eq!(bodies[0]["status"]["phase"], "Failed");
    assert_eq!(bodies[0]["status"]["conditions"][0]["reason"], "NotFound");
}

#[tokio::test]
async fn a_finished_rotation_is_not_run_again() {
    let f = Fixture::new();
    let (ctx, mut handle) = f.context();
    let object = rotation_object(
        "rot-done",
        json!({ "volumes": { "persistentVolumeName": "pv-1" } }),
        Some(json!({ "phase": "Succeeded", "observedGeneration": 1 })),
    );
    let action = rotation::reconcile(Arc::new(object), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_no_request(&mut handle).await;
}

#[tokio::test]
async fn key_state_is_annotated_and_changes_raise_events_on_the_claim() {
    let f = Fixture::new();
    f.volume("pv-k", "app", true).await;
    let pv_path = "/api/v1/persistentvolumes/pv-k?fieldManager=cryptvol-controller";
    let pv_answer = pv("pv-k", "cryptvol.csi.dev", "gold", json!({}));
    let claim_events = "/apis/events.k8s.io/v1/namespaces/team/events";

    // First look: healthy, annotated, no event.
    let (ctx, handle) = f.context();
    let api = tokio::spawn(serve(handle, vec![expect(Method::PATCH, pv_path, pv_answer.clone())]));
    let object: k8s_openapi::api::core::v1::PersistentVolume =
        serde_json::from_value(pv("pv-k", "cryptvol.csi.dev", "gold", json!({}))).unwrap();
    let action = keystate::reconcile(Arc::new(object), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(ctx.settings.key_state_interval));
    let bodies = api.await.unwrap();
    let annotations = &bodies[0]["metadata"]["annotations"];
    assert_eq!(annotations["cryptvol.csi.dev/key-arn"], arn_of("app"));
    assert_eq!(annotations["cryptvol.csi.dev/kms-connection"], "local");
    assert_eq!(annotations["cryptvol.csi.dev/key-state"], "enabled");
    assert!(annotations["cryptvol.csi.dev/key-state-since"].is_string());

    // Already current: no request at all.
    let current = json!({
        "cryptvol.csi.dev/key-arn": arn_of("app"),
        "cryptvol.csi.dev/kms-connection": "local",
        "cryptvol.csi.dev/key-state": "enabled",
    });
    let (ctx, mut handle) = f.context();
    let object = serde_json::from_value(pv("pv-k", "cryptvol.csi.dev", "gold", current.clone())).unwrap();
    keystate::reconcile(Arc::new(object), ctx).await.unwrap();
    assert_no_request(&mut handle).await;

    // Disabled: the state changes and the claim gets a Warning.
    f.disable("app", true);
    let (ctx, handle) = f.context();
    let script = vec![
        expect(Method::PATCH, pv_path, pv_answer.clone()),
        expect(Method::POST, claim_events, Value::Null),
    ];
    let api = tokio::spawn(serve(handle, script));
    let object = serde_json::from_value(pv("pv-k", "cryptvol.csi.dev", "gold", current.clone())).unwrap();
    keystate::reconcile(Arc::new(object), ctx).await.unwrap();
    let bodies = api.await.unwrap();
    assert_eq!(bodies[0]["metadata"]["annotations"]["cryptvol.csi.dev/key-state"], "disabled");
    assert!(
        bodies[0]["metadata"]["annotations"].get("cryptvol.csi.dev/key-arn").is_none(),
        "only changes are sent"
    );
    assert_eq!(bodies[1]["type"], "Warning");
    assert_eq!(bodies[1]["reason"], "KeyDisabled");
    assert_eq!(bodies[1]["regarding"]["kind"], "PersistentVolumeClaim");
    assert_eq!(bodies[1]["regarding"]["name"], "claim-pv-k");

    // Enabled again: a Normal KeyRecovered.
    f.disable("app", false);
    let mut was_disabled = current;
    was_disabled["cryptvol.csi.dev/key-state"] = json!("disabled");
    let (ctx, handle) = f.context();
    let script = vec![
        expect(Method::PATCH, pv_path, pv_answer.clone()),
        expect(Method::POST, claim_events, Value::Null),
    ];
    let api = tokio::spawn(serve(handle, script));
    let object = serde_json::from_value(pv("pv-k", "cryptvol.csi.dev", "gold", was_disabled)).unwrap();
    keystate::reconcile(Arc::new(object), ctx).await.unwrap();
    let bodies = api.await.unwrap();
    assert_eq!(bodies[0]["metadata"]["annotations"]["cryptvol.csi.dev/key-state"], "enabled");
    assert_eq!(
        (bodies[1]["type"].clone(), bodies[1]["reason"].clone()),
        (json!("Normal"), json!("KeyRecovered"))
    );
}

#[tokio::test]
async fn key_state_follows_a_rotation_and_ignores_other_drivers() {
    let f = Fixture::new();
    f.volume("pv-r", "app", true).await;
    cryptvol::rotation::rotate_volume(&f.store, &f.kms, "pv-r", Some("other"), &Secrets::default())
        .await
        .unwrap();
    let (ctx, handle) = f.context();
    let pv_path = "/api/v1/persistentvolumes/pv-r?fieldManager=cryptvol-controller";
    let pv_answer = pv("pv-r", "cryptvol.csi.dev", "gold", json!({}));
    let api = tokio::spawn(serve(handle, vec![expect(Method::PATCH, pv_path, pv_answer.clone())]));
    let before = json!({ "cryptvol.csi.dev/key-arn": arn_of("app"), "cryptvol.csi.dev/kms-connection": "local", "cryptvol.csi.dev/key-state": "enabled" });
    let object = serde_json::from_value(pv("pv-r", "cryptvol.csi.dev", "gold", before)).unwrap();
    keystate::reconcile(Arc::new(object), ctx).await.unwrap();
    let bodies = api.await.unwrap();
    let annotations = bodies[0]["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations.len(), 1, "{annotations:?}");
    assert_eq!(annotations["cryptvol.csi.dev/key-arn"], arn_of("other"));

    let (ctx, mut handle) = f.context();
    let object = serde_json::from_value(pv("pv-ebs", "ebs.csi.aws.com", "gold", json!({}))).unwrap();
    assert_eq!(keystate::reconcile(Arc::new(object), ctx).await.unwrap(), Action::await_change());
    assert_no_request(&mut handle).await;
}

#[tokio::test]
async fn scheduled_rotation_creates_a_rotation_when_due_and_reports_bad_intervals() {
    let f = Fixture::new();
    let (ctx, handle) = f.context();
    let class = |name: &str, provisioner: &str, interval: Option<&str>| {
        let annotations = match interval {
            Some(i) => json!({ "cryptvol.csi.dev/rotation-interval": i }),
            None => json!({}),
        };
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": { "name": name, "annotations": annotations }, "provisioner": provisioner })
    };
    let classes = json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClassList", "metadata": {}, "items": [
        class("gold", "cryptvol.csi.dev", Some("weekly")),
        class("plain", "cryptvol.csi.dev", None),
        class("ebs", "ebs.csi.aws.com", Some("weekly")),
        class("silver", "cryptvol.csi.dev", Some("5m")),
        class("bronze", "cryptvol.csi.dev", Some("1d")),
    ]});
    let recent = k8s_openapi::jiff::Timestamp::now().to_string();
    let empty = json!({ "apiVersion": "cryptvol.csi.dev/v1alpha1", "kind": "EncryptionKeyRotationList", "metadata": {}, "items": [] });
    let bronze_done = json!({ "apiVersion": "cryptvol.csi.dev/v1alpha1", "kind": "EncryptionKeyRotationList", "metadata": {}, "items": [
        { "apiVersion": "cryptvol.csi.dev/v1alpha1", "kind": "EncryptionKeyRotation",
          "metadata": { "name": "bronze-1", "creationTimestamp": recent },
          "spec": { "volumes": { "storageClassName": "bronze" } }, "status": { "phase": "Succeeded" } }
    ]});
    let script = vec![
        expect(Method::GET, "/apis/storage.k8s.io/v1/storageclasses?", classes),
        expect(
            Method::GET,
            "/apis/cryptvol.csi.dev/v1alpha1/encryptionkeyrotations?labelSelector=cryptvol.csi.dev%2Fscheduled-for%3Dgold",
            empty,
        ),
        expect(Method::POST, "/apis/cryptvol.csi.dev/v1alpha1/encryptionkeyrotations", Value::Null),
        expect(Method::POST, EVENTS, Value::Null),
        expect(
            Method::GET,
            "/apis/cryptvol.csi.dev/v1alpha1/encryptionkeyrotations?labelSelector=cryptvol.csi.dev%2Fscheduled-for%3Dbronze",
            bronze_done,
        ),
    ];
    let api = tokio::spawn(serve(handle, script));
    let created = schedule::run_once(&ctx).await.unwrap();
    let bodies = api.await.unwrap();
    assert_eq!(created.len(), 1, "only gold is due: {created:?}");
    assert!(created[0].starts_with("gold-"));
    let rotation = &bodies[2];
    assert_eq!(rotation["metadata"]["labels"]["cryptvol.csi.dev/scheduled-for"], "gold");
    assert_eq!(rotation["spec"]["volumes"]["storageClassName"], "gold");
    assert!(rotation["spec"].get("targetKeyId").is_none(), "scheduled rotation uses each volume's own key");
    assert_eq!(bodies[3]["reason"], "InvalidRotationInterval");
    assert_eq!(bodies[3]["regarding"]["name"], "silver");
    assert!(bodies[3]["note"].as_str().unwrap().contains("minimum"));
}
