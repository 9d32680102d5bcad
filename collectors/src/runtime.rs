//! The collection loop: collect every interval, keep the last result, serve it.
