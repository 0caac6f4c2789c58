"""Kubernetes' Container Runtime Interface (runtime.v1) on ctrd's own socket.

`RuntimeService` (`runtime_service`) and `ImageService` (`image_service`) are served when
`[cri] enabled` (the default, as containerd's CRI plugin), each built at its first call. Their
objects live in the `[cri] namespace` (`k8s.io`) as ordinary ctrd objects. What the CRI
expects of each call is in ../shared/design/cri-notes.md; what is served so far is in each
module's docstring.
"""
