//! magics
