//! certaintyd: integrity of a RAM-resident root filesystem. Not yet built: see issue 3.
