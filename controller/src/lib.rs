//! The cryptvol controller plugin: serves the CSI Identity and Controller services.
