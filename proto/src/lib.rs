//! The Container Storage Interface v1 protobuf, compiled for server and client use.
