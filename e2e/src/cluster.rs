//! The cluster under test: a client, per-test namespaces, and waits on conditions with timeouts.

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::core::Status;
use kube::runtime::wait::{await_condition, conditions, Condition};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::{kube_err, E2eError, Result, Settings};

/// A connection to the cluster under test.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    settings: Settings,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects with the ambient kubeconfig and reads the settings.
    pub async fn connect() -> Result<Self> {
        let settings = Settings::from_env()?;
        let client = Client::try_default().await.map_err(kube_err("connecting to the cluster"))?;
        Ok(Cluster { client, settings })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The names of the nodes that run workloads (not the control plane), sorted.
    pub async fn workers(&self) -> Result<Vec<String>> {
        let nodes: Api<Node> = Api::all(self.client());
        let params = ListParams::default().labels("!node-role.kubernetes.io/control-plane");
        let mut names: Vec<String> = nodes
            .list(&params)
            .await
            .map_err(kube_err("listing nodes"))?
            .into_iter()
            .map(|n| n.name_any())
            .collect();
        names.sort();
        Ok(names)
    }

    /// At least `count` worker names, or an error saying the cluster is too small.
    pub async fn require_workers(&self, count: usize) -> Result<Vec<String>> {
        let workers = self.workers().await?;
        if workers.len() < count {
            return Err(E2eError::ClusterState(format!(
                "this test needs {count} worker nodes, the cluster has {workers:?}"
            )));
        }
        Ok(workers)
    }

    /// Creates a namespace named `cryptvol-e2e-<prefix>-<random>` with the given labels.
    pub async fn namespace(&self, prefix: &str, labels: serde_json::Value) -> Result<TestNamespace> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("cryptvol-e2e-{prefix}-{}", &suffix[..8]);
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } }))
            .map_err(|e| E2eError::ClusterState(format!("namespace literal: {e}")))?;
        let api: Api<Namespace> = Api::all(self.client());
        api.create(&PostParams::default(), &ns)
            .await
            .map_err(kube_err(format!("creating namespace {name}")))?;
        Ok(TestNamespace { name, cluster: self.clone() })
    }

    /// The PersistentVolume a bound claim uses.
    pub async fn volume_of(&self, claim: &PersistentVolumeClaim) -> Result<PersistentVolume> {
        let pv_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .ok_or_else(|| E2eError::ClusterState(format!("claim {} is not bound", claim.name_any())))?;
        let api: Api<PersistentVolume> = Api::all(self.client());
        api.get(&pv_name).await.map_err(kube_err(format!("reading PersistentVolume {pv_name}")))
    }

    /// Waits until `cond` holds for the named object; returns the object as last seen.
    pub async fn wait<K>(
        &self,
        api: Api<K>,
        name: &str,
        what: &str,
        cond: impl Condition<K>,
    ) -> Result<Option<K>>
    where
        K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
    {
        let after = self.settings.timeout;
        tokio::time::timeout(after, await_condition(api, name, cond))
            .await
            .map_err(|_| E2eError::Timeout { what: what.to_string(), after })?
            .map_err(|source| E2eError::Wait { what: what.to_string(), source })
    }

    /// Waits until the PersistentVolume is gone.
    pub async fn wait_volume_deleted(&self, pv: &PersistentVolume) -> Result<()> {
        let api: Api<PersistentVolume> = Api::all(self.client());
        let uid = pv.uid().unwrap_or_default();
        let what = format!("PersistentVolume {} to be deleted", pv.name_any());
        self.wait(api, &pv.name_any(), &what, conditions::is_deleted(&uid)).await.map(|_| ())
    }

    /// Deletes the node plugin pod on `node` and waits until its replacement is ready.
    pub async fn restart_node_plugin(&self, node: &str) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client(), &self.settings.driver_namespace);
        let selector = &self.settings.node_plugin_selector;
        let on_node = format!("spec.nodeName={node}");
        let params = ListParams::default().labels(selector).fields(&on_node);
        let pods = api.list(&params).await.map_err(kube_err("listing node plugin pods"))?.items;
        let [old] = pods.as_slice() else {
            return Err(E2eError::ClusterState(format!(
                "expected one node plugin pod ({selector}) on {node}, found {}",
                pods.len()
            )));
        };
        let old_uid = old.uid().unwrap_or_default();
        api.delete(&old.name_any(), &DeleteParams::default())
            .await
            .map_err(kube_err(format!("deleting node plugin pod {}", old.name_any())))?;
        let what = format!("node plugin pod {} to be deleted", old.name_any());
        self.wait(api.clone(), &old.name_any(), &what, conditions::is_deleted(&old_uid)).await?;

        let config = watcher::Config::default().labels(selector).fields(&on_node);
        let replaced = move |pod: &Pod| pod.uid().as_deref() != Some(old_uid.as_str()) && is_ready(pod);
        let mut replacements = watcher(api, config)
            .applied_objects()
            .try_filter(move |pod| std::future::ready(replaced(pod)))
            .boxed();
        let after = self.settings.timeout;
        let what = format!("a new node plugin pod on {node} to be ready");
        let first = tokio::time::timeout(after, replacements.try_next()).await;
        match first {
            Err(_) => Err(E2eError::Timeout { what, after }),
            Ok(Ok(Some(_))) => Ok(()),
            Ok(Ok(None)) => Err(E2eError::ClusterState(format!("the watch for {what} ended"))),
            Ok(Err(e)) => Err(E2eError::ClusterState(format!("watching for {what}: {e}"))),
        }
    }
}

impl Cluster {
    /// Creates `object` until admission refuses it and returns the refusal. A policy takes a
    /// moment to take effect after it is applied, so an object that got through is deleted and
    /// the create is tried again, every [`POLL_INTERVAL`], until the timeout.
    pub async fn until_refused<K>(&self, api: &Api<K>, object: &K) -> Result<Status>
    where
        K: Resource + Clone + Debug + DeserializeOwned + Serialize + Send + 'static,
    {
        let name = object.name_any();
        let after = self.settings.timeout;
        let deadline = tokio::time::Instant::now() + after;
        loop {
            match api.create(&PostParams::default(), object).await {
                Err(kube::Error::Api(status)) if status.is_forbidden() || status.is_invalid() => {
                    return Ok(*status)
                }
                Err(e) => return Err(kube_err(format!("creating {name}"))(e)),
                Ok(created) => {
                    api.delete(&name, &DeleteParams::default())
                        .await
                        .map_err(kube_err(format!("deleting {name}, which admission let through")))?;
                    let uid = created.uid().unwrap_or_default();
                    let what = format!("{name}, which admission let through, to be deleted");
                    self.wait(api.clone(), &name, &what, conditions::is_deleted(&uid)).await?;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(E2eError::Timeout { what: format!("admission to refuse {name}"), after });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// How often [`Cluster::until_refused`] tries again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Whether every container of the pod is ready.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// A namespace that one test owns. [`TestNamespace::delete`] removes it when the test passed;
/// a failed test leaves it for `e2e/run.sh` to collect logs from.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    cluster: Cluster,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.cluster.client(), &self.name)
    }

    pub fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.cluster.client(), &self.name)
    }

    /// Creates a claim and waits until it is bound; returns the claim and its volume.
    pub async fn bound_claim(
        &self,
        claim: &PersistentVolumeClaim,
    ) -> Result<(PersistentVolumeClaim, PersistentVolume)> {
        let name = claim.name_any();
        self.claims()
            .create(&PostParams::default(), claim)
            .await
            .map_err(kube_err(format!("creating claim {name}")))?;
        let bound = |c: Option<&PersistentVolumeClaim>| {
            c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Bound")
        };
        let what = format!("claim {}/{name} to be bound", self.name);
        let claim = self
            .cluster
            .wait(self.claims(), &name, &what, bound)
            .await?
            .ok_or_else(|| E2eError::ClusterState(format!("claim {}/{name} disappeared", self.name)))?;
        let volume = self.cluster.volume_of(&claim).await?;
        Ok((claim, volume))
    }

    /// Creates a pod and waits until it runs (its volume is mounted and its command started).
    pub async fn running_pod(&self, pod: &Pod) -> Result<()> {
        let name = self.create_pod(pod).await?;
        let what = format!("pod {}/{name} to run", self.name);
        let settled = |p: Option<&Pod>| p.and_then(phase).is_some_and(|ph| ph != "Pending");
        let seen = self.cluster.wait(self.pods(), &name, &what, settled).await?;
        match seen.as_ref().and_then(phase) {
            Some("Running") => Ok(()),
            _ => Err(E2eError::PodFailed { log: self.log(&name).await, name }),
        }
    }

    /// Creates a pod, waits until it has finished, and returns its log; a failed pod is an error.
    pub async fn completed_pod(&self, pod: &Pod) -> Result<String> {
        let name = self.create_pod(pod).await?;
        self.finished_pod(&name).await
    }

    /// Waits until an existing pod has finished and returns its log; a failed pod is an error.
    pub async fn finished_pod(&self, name: &str) -> Result<String> {
        let name = name.to_string();
        let what = format!("pod {}/{name} to finish", self.name);
        let done = |p: Option<&Pod>| p.and_then(phase).is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        let seen = self.cluster.wait(self.pods(), &name, &what, done).await?;
        let log = self.log(&name).await;
        match seen.as_ref().and_then(phase) {
            Some("Succeeded") => Ok(log),
            _ => Err(E2eError::PodFailed { name, log }),
        }
    }

    /// Deletes a pod and waits until it is gone (its volume unpublished).
    pub async fn delete_pod(&self, name: &str) -> Result<()> {
        let Some(pod) = self.pods().get_opt(name).await.map_err(kube_err(format!("reading pod {name}")))?
        else {
            return Ok(());
        };
        let uid = pod.uid().unwrap_or_default();
        self.pods()
            .delete(name, &DeleteParams::default())
            .await
            .map_err(kube_err(format!("deleting pod {name}")))?;
        let what = format!("pod {}/{name} to be deleted", self.name);
        self.cluster.wait(self.pods(), name, &what, conditions::is_deleted(&uid)).await.map(|_| ())
    }

    /// Deletes a claim and waits until its PersistentVolume is gone (the driver deleted the volume).
    pub async fn delete_claim(&self, name: &str, volume: &PersistentVolume) -> Result<()> {
        self.claims()
            .delete(name, &DeleteParams::default())
            .await
            .map_err(kube_err(format!("deleting claim {name}")))?;
        self.cluster.wait_volume_deleted(volume).await
    }

    /// Deletes the namespace (without waiting; its volumes go with it).
    pub async fn delete(self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.cluster.client());
        api.delete(&self.name, &DeleteParams::default())
            .await
            .map_err(kube_err(format!("deleting namespace {}", self.name)))?;
        Ok(())
    }

    async fn create_pod(&self, pod: &Pod) -> Result<String> {
        let name = pod.name_any();
        self.pods()
            .create(&PostParams::default(), pod)
            .await
            .map_err(kube_err(format!("creating pod {name}")))?;
        Ok(name)
    }

    async fn log(&self, name: &str) -> String {
        match self.pods().logs(name, &LogParams::default()).await {
            Ok(log) => log,
            Err(e) => format!("(no log: {e})"),
        }
    }
}
