//! The tower layers every call passes, outermost first: its span and log
//! line ([`calls`]), its limits and deadline ([`limits`]), and its admission
//! (credential and tenant, [`routing`]). [`crate::server`] stacks them in one
//! `ServiceBuilder`; services below them receive an admitted call.

pub mod calls;
pub mod limits;
pub mod routing;
