//! VM integration tests for drones. Not yet built: see issue 5.
