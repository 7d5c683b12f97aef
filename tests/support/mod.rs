//! Shared fixtures for the integration tests.
pub mod mock_client;
pub mod mock_sdk;
