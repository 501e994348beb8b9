//! Fault-injection scenarios run against real Keelson processes, with their histories checked against models.
