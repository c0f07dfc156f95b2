//! Nothing here: cargo wants a library target; the test guests are the
//! examples (`examples/*.rs`), one component each.
