"""Field protocol drivers. Each package exposes `SPEC`, a `gatewayd.driver.DriverSpec`."""
