"""The Kubernetes backend (`OVAS_BACKEND=kubernetes`): sessions as Pods and Services, or as
Flux HelmReleases, in one namespace; the catalog as OVAS custom resources. See README.md."""

from backends.kubernetes.backend import KubernetesBackend

__all__ = ["KubernetesBackend"]
