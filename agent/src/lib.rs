//! The Cella node agent. The cluster work (issue 3) builds it on `cella-containerizer`.
