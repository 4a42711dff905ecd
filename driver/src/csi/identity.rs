//! The CSI Identity service, shared by both plugins; Probe checks the backing root and the KMS configuration.

use std::sync::Arc;

use cryptvol_proto::csi::v1 as csi;
use csi::identity_server::Identity;
use tonic::{Request, Response, Status};

use crate::kms::config::KmsRegistry;
use crate::volume::BackingStore;

/// Serves Identity on both plugin endpoints.
///
/// Plugin capabilities describe the driver as a whole, so the node endpoint too reports that the
/// driver offers a Controller service (served by `cryptvol-controller`).
#[derive(Debug, Clone)]
pub struct IdentityService {
    store: BackingStore,
    kms: Arc<KmsRegistry>,
}

impl IdentityService {
    pub fn new(store: BackingStore, kms: Arc<KmsRegistry>) -> Self {
        IdentityService { store, kms }
    }

    /// Ready when the backing root is a writable directory and every KMS connection can load.
    pub fn readiness(&self) -> Result<(), String> {
        self.store.check_ready().map_err(|e| e.to_string())?;
        self.kms.check_ready().map_err(|e| e.to_string())
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: super::DRIVER_NAME.to_string(),
            vendor_version: super::plugin_version().to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::volume_expansion::Type as ExpansionType;
        use csi::plugin_capability::{service::Type as ServiceType, Service, Type, VolumeExpansion};
        let capabilities = vec![
            csi::PluginCapability {
                r#type: Some(Type::Service(Service { r#type: ServiceType::ControllerService as i32 })),
            },
            // NodeExpandVolume raises the limit of a live mount: volumes grow while in use.
            csi::PluginCapability {
                r#type: Some(Type::VolumeExpansion(VolumeExpansion { r#type: ExpansionType::Online as i32 })),
            },
        ];
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities }))
    }

    #[tracing::instrument(skip_all)]
    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let this = self.clone();
        let ready = tokio::task::spawn_blocking(move || this.readiness())
            .await
            .map_err(|e| Status::unavailable(format!("readiness check did not finish: {e}")))?;
        match ready {
            Ok(()) => Ok(Response::new(csi::ProbeResponse { ready: Some(true) })),
            Err(reason) => {
                tracing::warn!(%reason, "probe: not ready");
                Err(Status::failed_precondition(format!("not ready: {reason}")))
            }
        }
    }
}
