//! The fleet: several dnlb instances in front of one SIP farm share probing and agree on health
//! through etcd (`[cluster]`).
pub mod core;
