pub mod customer;
pub mod ops;
