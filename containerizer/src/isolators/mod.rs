//! The isolator pipeline (modelled on Mesos' `Isolator`): each isolator contributes
//! to the launch in `prepare`, places the waiting child in `isolate`, reports limits
//! hit in `watch`, figures in `usage`, and undoes its work in `cleanup`.
