//! # lambdaflow-jobs: reference jobs
//!
//! [`shop`] is the e-commerce job of the shared spec (`spec/shop-workload.md`): eight views
//! over purchases, refunds, product views and inventory changes, written once in the DSL
//! and run by the engine in batch and speed mode.

#![deny(missing_docs)]

pub mod shop;
