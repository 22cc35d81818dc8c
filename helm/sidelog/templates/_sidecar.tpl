{{/*
Sidecar mode: named templates for an application chart that lists this
chart as a dependency (with `sidelog: {mode: sidecar}` in its values, so
this chart renders nothing of its own). Every template takes the same
explicit dict:

  root         the application chart's context ($)                 required
  name         the sidelog group: names its headless Service and
               Secrets, and labels its pods (sidelog/group=<name>)  required
  replicas     how many pods run the sidecar (bootstrap-expect)    required
  statefulSet  the app's StatefulSet name: its pods <sts>-<i> get
               stable DNS names (static --join works). Omit for a
               Deployment (needs discovery.mode=dns).              optional
  workload     Deployment | StatefulSet [default: values
               sidecar.workload; its default "auto" = StatefulSet
               when statefulSet is given, else Deployment]. Decides
               agent.leaveOnTerminate's default (Deployment: leave
               on SIGTERM; StatefulSet with PVCs: keep the place)   optional
  persistent   true when the app's volumeClaimTemplates hold the
               data volume (StatefulSet only) [default: false =
               emptyDir]                                            optional
  partition    the app StatefulSet's rollingUpdate.partition, if
               any: --force-new-cluster in agent.extraArgs is
               refused unless it is replicas - 1 (one pod gets it)  optional
  values       the sidelog values [default: root.Values.sidelog,
               i.e. this chart's values.yaml under the dependency]  optional
  containerName  [default: sidelog]                                 optional

  initContainers:
    {{- include "sidelog.sidecar" $args | nindent 8 }}   # restartPolicy: Always
  volumes:
    {{- include "sidelog.sidecar.volumes" $args | nindent 8 }}
  metadata.labels:
    {{- include "sidelog.sidecar.podLabels" $args | nindent 8 }}
  serviceName (StatefulSet): {{ include "sidelog.sidecar.headlessName" $args }}
  terminationGracePeriodSeconds: {{ include "sidelog.sidecar.terminationGracePeriodSeconds" $args }}
  ---
  {{ include "sidelog.sidecar.headlessService" $args }}
  {{ include "sidelog.sidecar.tlsSecret" $args }}
*/}}
{{- define "sidelog.sidecar.ctx" -}}
{{- if not .root }}{{ fail "sidelog.sidecar: pass (dict \"root\" $ ...)" }}{{ end -}}
{{- if not .name }}{{ fail "sidelog.sidecar: pass a \"name\" for the sidelog group" }}{{ end -}}
{{- if not .replicas }}{{ fail "sidelog.sidecar: pass \"replicas\" (the number of pods that run the sidecar)" }}{{ end -}}
{{- $V := .values | default (index .root.Values "sidelog") -}}
{{- if not $V }}{{ fail "sidelog.sidecar: no sidelog values: add the sidelog chart as a dependency (alias sidelog) or pass \"values\"" }}{{ end -}}
{{- if or (not $V.image) (not $V.sidecar) }}{{ fail "sidelog.sidecar: the sidelog values lack image/sidecar: is the sidelog chart a dependency?" }}{{ end -}}
{{- $workload := .workload | default $V.sidecar.workload | default "auto" -}}
{{- if eq $workload "auto" }}{{ $workload = ternary "StatefulSet" "Deployment" (not (empty .statefulSet)) }}{{ end -}}
{{- if not (has $workload (list "Deployment" "StatefulSet")) -}}
{{- fail (printf "sidelog.sidecar: workload %q is not Deployment, StatefulSet or auto" $workload) -}}
{{- end -}}
{{- if and (eq $workload "StatefulSet") (not .statefulSet) -}}
{{- fail "sidelog.sidecar: workload StatefulSet needs \"statefulSet\" (the app StatefulSet's name, whose pods get stable names)" -}}
{{- end -}}
{{- if and (eq $workload "Deployment") .statefulSet -}}
{{- fail (printf "sidelog.sidecar: workload Deployment, but \"statefulSet\" (%s) is given: a Deployment's pods have no stable names (drop one of them)" .statefulSet) -}}
{{- end -}}
{{- if and (eq $workload "Deployment") .persistent -}}
{{- fail "sidelog.sidecar: \"persistent\" (volumeClaimTemplates) needs a StatefulSet; a Deployment's log is an emptyDir" -}}
{{- end -}}
{{- $labels := dict "app.kubernetes.io/name" "sidelog" "app.kubernetes.io/instance" .root.Release.Name "app.kubernetes.io/managed-by" .root.Release.Service "app.kubernetes.io/component" "log" "app.kubernetes.io/part-of" .name "sidelog/group" .name -}}
{{- toJson (dict "name" .name "namespace" .root.Release.Namespace "headless" (printf "%s-headless" .name) "stsName" (.statefulSet | default "") "replicas" (int .replicas) "mode" "sidecar" "workload" $workload "persistent" (not (empty .persistent)) "partition" (ternary -1 .partition (kindIs "invalid" .partition)) "labels" $labels "containerName" (.containerName | default "sidelog")) -}}
{{- end }}


{{/* The native sidecar container (an initContainers entry). */}}
{{- define "sidelog.sidecar" -}}
{{- $V := .values | default (index .root.Values "sidelog") -}}
{{- $ctx := include "sidelog.sidecar.ctx" . | fromJson | merge (dict "root" .root "V" $V) -}}
- name: {{ $ctx.containerName }}
  # A native sidecar (Kubernetes >= 1.29): started before the app's
  # containers, kept running beside them, stopped after them.
  restartPolicy: Always
  {{- include "sidelog.containerSpec" $ctx | trim | nindent 2 }}
{{- end }}

{{- define "sidelog.sidecar.podLabels" -}}
sidelog/group: {{ .name }}
{{- end }}

{{- define "sidelog.sidecar.headlessName" -}}
{{- printf "%s-headless" .name -}}
{{- end }}

{{/* The sidecar's data volume and its TLS volumes (pod .spec.volumes
entries). With "persistent": true the data volume is left to the app's
volumeClaimTemplates (see sidelog.sidecar.volumeClaimTemplate). */}}
{{- define "sidelog.sidecar.volumes" -}}
{{- $V := .values | default (index .root.Values "sidelog") -}}
{{- $ctx := include "sidelog.sidecar.ctx" . | fromJson | merge (dict "root" .root "V" $V) -}}
{{- if not .persistent }}
- name: sidelog-data
  emptyDir:
    {{- with $V.sidecar.emptyDir.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}
{{- include "sidelog.tlsVolumes" $ctx }}
{{- end }}

{{- define "sidelog.sidecar.volumeClaimTemplate" -}}
{{- $V := .values | default (index .root.Values "sidelog") -}}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata:
    name: sidelog-data
  spec:
    accessModes: {{- toYaml $V.persistence.accessModes | nindent 6 }}
    {{- with $V.persistence.storageClass }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests:
        storage: {{ $V.persistence.size }}
{{- end }}

{{- define "sidelog.sidecar.terminationGracePeriodSeconds" -}}
{{- $V := .values | default (index .root.Values "sidelog") -}}
{{- add 10 (int $V.agent.shutdownGraceSeconds) -}}
{{- end }}

{{/* The headless Service through which the group's pods find each other
(not-ready pods included: the cluster forms before any node is ready). */}}
{{- define "sidelog.sidecar.headlessService" -}}
{{- $V := .values | default (index .root.Values "sidelog") -}}
{{- $ctx := include "sidelog.sidecar.ctx" . | fromJson -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $ctx.headless }}
  namespace: {{ $ctx.namespace }}
  labels: {{- toYaml $ctx.labels | nindent 4 }}
spec:
  type: ClusterIP
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    sidelog/group: {{ $ctx.name }}
  ports:
    - name: peer
      port: {{ $V.ports.peer }}
      targetPort: {{ $V.ports.peer }}
      protocol: TCP
    {{- if $V.ports.health }}
    - name: health
      port: {{ $V.ports.health }}
      targetPort: {{ $V.ports.health }}
      protocol: TCP
    {{- end }}
{{- end }}

{{/* The group's peer certificates (generated and kept, or cert-manager). */}}
{{- define "sidelog.sidecar.tlsSecret" -}}
{{- $V := .values | default (index .root.Values "sidelog") -}}
{{- $ctx := include "sidelog.sidecar.ctx" . | fromJson | merge (dict "root" .root "V" $V) -}}
{{- include "sidelog.tlsResources" $ctx }}
{{- end }}
