//! Why a reconcile failed: Kubernetes API errors, and the steps it took that failed.

use kube::runtime::finalizer;

use crate::certificates::CertificateError;
use crate::plan::StopProblem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("{}", steps_failed(.0))]
    Steps(Vec<FailedStep>),
    #[error("certificates: {0}")]
    Certificates(#[from] CertificateError),
    /// Deleting a cluster: the meta group goes only after every data group is gone.
    #[error("deleting {}: the meta group waits until they are gone", .0.join(", "))]
    DataGroupsRemain(Vec<String>),
}

fn steps_failed(steps: &[FailedStep]) -> String {
    steps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A step the reconcile took that failed: what it was, and why. Each is also a Warning Event;
/// the reconcile then fails with all of them and is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {cause}")]
pub struct FailedStep {
    pub(super) step: String,
    #[source]
    pub(super) cause: StepError,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("pod {pod} has no IP")]
    NoPodIp { pod: String },
    #[error("the meta group has no leader")]
    NoMetaLeader,
    /// A node refused the call, or could not be reached.
    #[error("{}", .0.message())]
    Node(tonic::Status),
    #[error("stopping {pod}: {}", .status.message())]
    Stop { pod: String, status: tonic::Status },
    #[error("deleting {what}: {source}")]
    Delete { what: String, source: Box<Error> },
    /// The node's stop report does not allow deleting its pod: the rollout halts.
    #[error("pod {pod} was not deleted: {problem}")]
    StopRefused { pod: String, problem: StopProblem },
}

impl Error {
    /// Label of the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "Kube",
            Error::Finalizer(_) => "Finalizer",
            Error::NoNamespace(_) => "NoNamespace",
            Error::Steps(_) => "NodeStep",
            Error::Certificates(_) => "Certificates",
            Error::DataGroupsRemain(_) => "DataGroupsRemain",
        }
    }
}
