//! The CSI Controller service: provisions volumes with a wrapped data key, lists, expands and deletes them.
//!
//! The controller never holds a plaintext data key: it asks the KMS for a wrapped key bound to the
//! volume id and writes it into the volume header.

use std::collections::HashMap;
use std::sync::Arc;

use cryptvol_proto::csi::v1 as csi;
use csi::controller_server::Controller;
use tonic::{Request, Response, Status};

use super::{kms_status, required, store_status, InFlight, Phase};
use crate::header::{VolumeHeader, VolumeState};
use crate::kms::config::KmsRegistry;
use crate::kms::Secrets;
use crate::volume::{volume_id_for_name, BackingStore, Created, StoreError};

/// Capacity when a request gives no range: 1 GiB.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
const PAGE_TOKEN_PREFIX: &str = "after:";

/// A CreateVolume request, checked.
#[derive(Debug)]
pub struct CreateVolume {
    pub name: String,
    pub volume_id: String,
    pub required_bytes: u64,
    pub limit_bytes: u64,
    pub key_id: String,
    pub connection: Option<String>,
    pub secrets: Secrets,
}

impl TryFrom<csi::CreateVolumeRequest> for CreateVolume {
    type Error = Status;

    fn try_from(req: csi::CreateVolumeRequest) -> Result<Self, Status> {
        let name = required(&req.name, "name")?.to_string();
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        for (i, cap) in req.volume_capabilities.iter().enumerate() {
            super::check_capability(cap, &format!("volume_capabilities[{i}]"))
                .map_err(Status::invalid_argument)?;
        }
        if req.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volume_content_source: cloning and restoring snapshots are not supported",
            ));
        }
        let (required_bytes, limit_bytes) = capacity_range(req.capacity_range.as_ref())?;
        let mut key_id = None;
        let mut connection = None;
        let mut unknown = Vec::new();
        for (k, v) in &req.parameters {
            match k.as_str() {
                super::PARAM_KMS_KEY_ID => key_id = Some(v.clone()),
                super::PARAM_KMS_CONNECTION => connection = Some(v.clone()),
                _ if k.starts_with(super::PROVISIONER_PARAM_PREFIX) => {}
                _ => unknown.push(k.clone()),
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(Status::invalid_argument(format!(
                "unknown parameters {unknown:?}; cryptvol takes {} and {}",
                super::PARAM_KMS_KEY_ID,
                super::PARAM_KMS_CONNECTION
            )));
        }
        let key_id = key_id.filter(|k| !k.is_empty()).ok_or_else(|| {
            Status::invalid_argument(format!("parameter {} is required", super::PARAM_KMS_KEY_ID))
        })?;
        if connection.as_deref() == Some("") {
            return Err(Status::invalid_argument(format!(
                "parameter {} is empty",
                super::PARAM_KMS_CONNECTION
            )));
        }
        let volume_id = volume_id_for_name(&name);
        Ok(CreateVolume {
            name,
            volume_id,
            required_bytes,
            limit_bytes,
            key_id,
            connection,
            secrets: Secrets::from_map(req.secrets),
        })
    }
}

/// Checks a capacity range and returns (required, limit) with 0 meaning "not given".
fn capacity_range(range: Option<&csi::CapacityRange>) -> Result<(u64, u64), Status> {
    let Some(range) = range else { return Ok((0, 0)) };
    let required = u64::try_from(range.required_bytes)
        .map_err(|_| Status::invalid_argument("capacity_range.required_bytes must not be negative"))?;
    let limit = u64::try_from(range.limit_bytes)
        .map_err(|_| Status::invalid_argument("capacity_range.limit_bytes must not be negative"))?;
    if limit > 0 && required > limit {
        return Err(Status::out_of_range(format!(
            "capacity_range: required_bytes {required} exceeds limit_bytes {limit}"
        )));
    }
    Ok((required, limit))
}

impl CreateVolume {
    /// The capacity to provision for this request.
    pub fn capacity(&self) -> u64 {
        match (self.required_bytes, self.limit_bytes) {
            (0, 0) => DEFAULT_CAPACITY,
            (0, limit) => limit.min(DEFAULT_CAPACITY),
            (required, _) => required,
        }
    }

    fn fits(&self, capacity: u64) -> bool {
        capacity >= self.required_bytes && (self.limit_bytes == 0 || capacity <= self.limit_bytes)
    }
}

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    store: BackingStore,
    kms: Arc<KmsRegistry>,
    in_flight: InFlight,
}

impl ControllerService {
    pub fn new(store: BackingStore, kms: Arc<KmsRegistry>) -> Self {
        ControllerService { store, kms, in_flight: InFlight::default() }
    }

    /// Provisions a volume (or finds the one an earlier call made).
    pub async fn create(&self, req: CreateVolume) -> Result<VolumeHeader, Status> {
        let _guard = self.in_flight.claim(&req.volume_id)?;
        let client =
            self.kms.client(req.connection.as_deref()).map_err(|e| kms_status(&e, Phase::Provision))?;
        let existing = self.blocking_header(&req.volume_id).await?;
        if let Some(existing) = &existing {
            // A retry that names the stored key exactly needs no KMS call.
            if existing.key_arn == req.key_id {
                return self.compare_existing(&req, existing.clone(), &existing.key_arn.clone());
            }
        }
        let info = client
            .describe_key(&req.key_id, &req.volume_id, &req.secrets)
            .await
            .map_err(|e| kms_status(&e, Phase::Provision))?;
        if let Some(existing) = existing {
            return self.compare_existing(&req, existing, &info.arn);
        }
        info.check_usable().map_err(|e| kms_status(&e, Phase::Provision))?;
        let wrapped = client
            .generate_wrapped_key(&info.arn, &req.volume_id, &req.secrets)
            .await
            .map_err(|e| kms_status(&e, Phase::Provision))?;
        let header = VolumeHeader::new(
            &req.volume_id,
            &req.name,
            &info.arn,
            client.connection(),
            &wrapped,
            req.capacity(),
        );
        let store = self.store.clone();
        let created = tokio::task::spawn_blocking(move || store.create(&header))
            .await
            .map_err(|e| Status::unavailable(format!("backing store task failed: {e}")))?
            .map_err(|e| store_status(&e))?;
        match created {
            Created::New(header) => {
                tracing::info!(volume_id = %header.volume_id, key_arn = %header.key_arn, "volume created");
                Ok(header)
            }
            Created::Existing(existing) => self.compare_existing(&req, existing, &info.arn),
        }
    }

    fn compare_existing(
        &self,
        req: &CreateVolume,
        existing: VolumeHeader,
        key_arn: &str,
    ) -> Result<VolumeHeader, Status> {
        let connection = req.connection.as_deref().unwrap_or(self.kms.default_connection());
        let conflict = if existing.state != VolumeState::Ready {
            Some("it is being deleted".to_string())
        } else if existing.name != req.name {
            Some(format!("its id belongs to volume name {:?}", existing.name))
        } else if existing.key_arn != key_arn {
            Some(format!("it uses key {}, not {key_arn}", existing.key_arn))
        } else if existing.kms_connection != connection {
            Some(format!("it uses KMS connection {}, not {connection}", existing.kms_connection))
        } else if !req.fits(existing.capacity_bytes) {
            Some(format!("its capacity {} is outside the requested range", existing.capacity_bytes))
        } else {
            None
        };
        match conflict {
            Some(why) => Err(Status::already_exists(format!("volume {} exists but {why}", req.name))),
            None => Ok(existing),
        }
    }

    async fn blocking_header(&self, id: &str) -> Result<Option<VolumeHeader>, Status> {
        let store = self.store.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || store.header(&id))
            .await
            .map_err(|e| Status::unavailable(format!("backing store task failed: {e}")))?
            .map_err(|e| store_status(&e))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BackingStore) -> Result<T, crate::volume::StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::unavailable(format!("backing store task failed: {e}")))?
            .map_err(|e| store_status(&e))
    }
}

/// The CSI `Volume` message for a header.
pub fn volume_message(header: &VolumeHeader) -> csi::Volume {
    csi::Volume {
        capacity_bytes: i64::try_from(header.capacity_bytes).unwrap_or(i64::MAX),
        volume_id: header.volume_id.clone(),
        volume_context: HashMap::from([
            (super::CTX_KEY_ARN.to_string(), header.key_arn.clone()),
            (super::CTX_KMS_CONNECTION.to_string(), header.kms_connection.clone()),
        ]),
        ..Default::default()
    }
}

fn rpc(kind: csi::controller_service_capability::rpc::Type) -> csi::ControllerServiceCapability {
    use csi::controller_service_capability::{Rpc, Type};
    csi::ControllerServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: kind as i32 })) }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = CreateVolume::try_from(request.into_inner())?;
        let header = self.create(req).await?;
        Ok(Response::new(csi::CreateVolumeResponse { volume: Some(volume_message(&header)) }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let id = required(&request.get_ref().volume_id, "volume_id")?.to_string();
        crate::volume::validate_volume_id(&id).map_err(|e| store_status(&e))?;
        let _guard = self.in_flight.claim(&id)?;
        self.blocking(move |store| store.delete(&id)).await?;
        tracing::info!("volume deleted");
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented("cryptvol has no attach step"))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("cryptvol has no attach step"))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let header = self
            .blocking_header(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        let problems: Vec<String> = req
            .volume_capabilities
            .iter()
            .enumerate()
            .filter_map(|(i, cap)| super::check_capability(cap, &format!("volume_capabilities[{i}]")).err())
            .collect();
        let response = if problems.is_empty() {
            csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: volume_message(&header).volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            }
        } else {
            csi::ValidateVolumeCapabilitiesResponse { confirmed: None, message: problems.join("; ") }
        };
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let max = usize::try_from(req.max_entries)
            .map_err(|_| Status::invalid_argument("max_entries must not be negative"))?;
        let after = if req.starting_token.is_empty() {
            None
        } else {
            let id = req.starting_token.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(|| {
                Status::aborted(format!(
                    "starting_token {:?} was not issued by this plugin",
                    req.starting_token
                ))
            })?;
            Some(id.to_string())
        };
        let page = self
            .blocking(move |store| {
                let ids = store.list()?;
                let start = after.as_ref().map_or(0, |a| ids.partition_point(|id| id <= a));
                let end = if max == 0 { ids.len() } else { (start + max).min(ids.len()) };
                let mut headers = Vec::with_capacity(end - start);
                for id in &ids[start..end] {
                    // A volume deleted between the listing and this read is simply skipped.
                    if let Some(h) = store.header(id)? {
                        headers.push(h);
                    }
                }
                let next = (end < ids.len()).then(|| ids[end - 1].clone());
                Ok((headers, next))
            })
            .await?;
        let (headers, next) = page;
        Ok(Response::new(csi::ListVolumesResponse {
            entries: headers
                .iter()
                .filter(|h| h.state == VolumeState::Ready)
                .map(|h| csi::list_volumes_response::Entry { volume: Some(volume_message(h)), status: None })
                .collect(),
            next_token: next.map(|id| format!("{PAGE_TOKEN_PREFIX}{id}")).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_capacity(
        &self,
        _request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let available = self.blocking(|store| store.available_bytes()).await?;
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: i64::try_from(available).unwrap_or(i64::MAX),
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::rpc::Type;
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc(Type::CreateDeleteVolume),
                rpc(Type::ListVolumes),
                rpc(Type::GetCapacity),
                rpc(Type::ExpandVolume),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        _request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn delete_snapshot(
        &self,
        _request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn list_snapshots(
        &self,
        _request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let range =
            req.capacity_range.ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        let (required_bytes, limit_bytes) = capacity_range(Some(&range))?;
        if required_bytes == 0 && limit_bytes == 0 {
            return Err(Status::invalid_argument("capacity_range must give required_bytes or limit_bytes"));
        }
        let _guard = self.in_flight.claim(&id)?;
        let capacity = self
            .blocking(move |store| {
                let wanted = if required_bytes > 0 { required_bytes } else { limit_bytes };
                let header = store.modify_header(&id, |header| -> Result<bool, StoreError> {
                    let grow = header.capacity_bytes < wanted;
                    if grow {
                        header.capacity_bytes = wanted;
                    }
                    Ok(grow)
                })?;
                Ok(header.map(|h| h.capacity_bytes))
            })
            .await?
            .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        if limit_bytes > 0 && capacity > limit_bytes {
            return Err(Status::out_of_range(format!(
                "the volume is already {capacity} bytes, above limit_bytes {limit_bytes}; volumes do not shrink"
            )));
        }
        Ok(Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
            // The node raises the live mount's limit (NodeExpandVolume); no remount.
            node_expansion_required: true,
        }))
    }

    async fn controller_get_volume(
        &self,
        _request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("ControllerGetVolume is not offered"))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("ControllerModifyVolume is not offered"))
    }

    async fn controller_list_volume_health(
        &self,
        _request: Request<csi::ControllerListVolumeHealthRequest>,
    ) -> Result<Response<csi::ControllerListVolumeHealthResponse>, Status> {
        Err(Status::unimplemented("volume health is not offered"))
    }

    async fn controller_get_volume_health(
        &self,
        _request: Request<csi::ControllerGetVolumeHealthRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeHealthResponse>, Status> {
        Err(Status::unimplemented("volume health is not offered"))
    }

    async fn get_snapshot(
        &self,
        _request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn controller_get_node_info(
        &self,
        _request: Request<csi::ControllerGetNodeInfoRequest>,
    ) -> Result<Response<csi::ControllerGetNodeInfoResponse>, Status> {
        Err(Status::unimplemented("ControllerGetNodeInfo is not offered"))
    }
}
