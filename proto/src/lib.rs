//! The Container Storage Interface v1 protobuf, compiled for server and client use.

mod redact;

/// The `csi.v1` protobuf package: messages, enums, and the tonic servers and clients.
pub mod csi {
    /// Generated from `csi.proto` (CSI spec v1.14.0) at build time.
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message;

    use crate::csi::v1::volume_capability::access_mode::Mode;
    use crate::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
    use crate::csi::v1::*;

    fn create_volume_request() -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: "pvc-1".to_owned(),
            volume_capabilities: vec![VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume {
                    fs_type: "ext4".to_owned(),
                    ..Default::default()
                })),
                access_mode: Some(AccessMode { mode: Mode::SingleNodeSingleWriter.into() }),
            }],
            parameters: HashMap::from([("kmsKeyId".to_owned(), "alias/x".to_owned())]),
            ..Default::default()
        }
    }

    /// The request above, encoded by hand from the CSI field numbers. Each field opens with the
    /// tag byte `(number << 3) | wire_type`; wire type 2 (length-delimited) is followed by a
    /// length, wire type 0 (varint) by the value.
    fn create_volume_request_wire() -> Vec<u8> {
        [
            &[0x0a, 5][..], // name = 1
            b"pvc-1",
            &[0x1a, 12], // volume_capabilities = 3, a VolumeCapability of 12 bytes:
            &[0x12, 6],  //   mount = 2, a MountVolume of 6 bytes:
            &[0x0a, 4],  //     fs_type = 1
            b"ext4",
            &[0x1a, 2],  //   access_mode = 3, an AccessMode of 2 bytes:
            &[0x08, 6],  //     mode = 1, SINGLE_NODE_SINGLE_WRITER = 6
            &[0x22, 19], // parameters = 4, one map entry of 19 bytes:
            &[0x0a, 8],  //   key = 1
            b"kmsKeyId",
            &[0x12, 7], //   value = 2
            b"alias/x",
        ]
        .concat()
    }

    #[test]
    fn create_volume_request_uses_the_spec_field_numbers() {
        let request = create_volume_request();
        let wire = request.encode_to_vec();
        assert_eq!(wire, create_volume_request_wire());
        assert_eq!(CreateVolumeRequest::decode(wire.as_slice()).unwrap(), request);
    }

    #[test]
    fn create_volume_request_decodes_bytes_written_by_another_implementation() {
        let decoded = CreateVolumeRequest::decode(create_volume_request_wire().as_slice()).unwrap();
        assert_eq!(decoded, create_volume_request());
        assert_eq!(decoded.volume_capabilities[0].access_mode.unwrap().mode(), Mode::SingleNodeSingleWriter);
    }

    #[test]
    fn access_modes_have_the_spec_numbers() {
        let modes = [
            (Mode::Unknown, 0, "UNKNOWN"),
            (Mode::SingleNodeWriter, 1, "SINGLE_NODE_WRITER"),
            (Mode::SingleNodeReaderOnly, 2, "SINGLE_NODE_READER_ONLY"),
            (Mode::MultiNodeReaderOnly, 3, "MULTI_NODE_READER_ONLY"),
            (Mode::MultiNodeSingleWriter, 4, "MULTI_NODE_SINGLE_WRITER"),
            (Mode::MultiNodeMultiWriter, 5, "MULTI_NODE_MULTI_WRITER"),
            (Mode::SingleNodeSingleWriter, 6, "SINGLE_NODE_SINGLE_WRITER"),
            (Mode::SingleNodeMultiWriter, 7, "SINGLE_NODE_MULTI_WRITER"),
        ];
        for (mode, number, name) in modes {
            assert_eq!(mode as i32, number);
            assert_eq!(mode.as_str_name(), name);
        }
    }

    #[test]
    fn services_are_served_under_the_csi_v1_package() {
        assert_eq!(identity_server::SERVICE_NAME, "csi.v1.Identity");
        assert_eq!(controller_server::SERVICE_NAME, "csi.v1.Controller");
        assert_eq!(node_server::SERVICE_NAME, "csi.v1.Node");
    }
}
