{{/*
Names and labels.
*/}}
{{- define "knockgate-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "knockgate-controller.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "knockgate-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "knockgate-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "knockgate-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "knockgate-controller.labels" -}}
helm.sh/chart: {{ include "knockgate-controller.chart" . }}
{{ include "knockgate-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: knockgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "knockgate-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "knockgate-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding what `knockgate-controller init` made. */}}
{{- define "knockgate-controller.pkiSecretName" -}}
{{- default (printf "%s-pki" (include "knockgate-controller.fullname" .)) .Values.pki.existingSecret }}
{{- end }}

{{- define "knockgate-controller.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* "0.0.0.0:7443", or "[::]:7443" when bindAddress is "::". */}}
{{- define "knockgate-controller.hostPort" -}}
{{- $addr := index . 0 }}{{- $port := index . 1 }}
{{- if contains ":" $addr }}
{{- printf "[%s]:%d" (trimAll "[]" $addr) (int $port) }}
{{- else }}
{{- printf "%s:%d" $addr (int $port) }}
{{- end }}
{{- end }}

{{- define "knockgate-controller.isSqlite" -}}
{{- if eq .Values.database.type "sqlite" }}true{{ end }}
{{- end }}

{{/*
Refuses configurations that would render but not work. Included by every workload
template, so `helm template` / `helm install` stop with the message.
*/}}
{{- define "knockgate-controller.validate" -}}
{{- $replicas := int .Values.replicas }}
{{- if and (eq .Values.database.type "sqlite") (gt $replicas 1) }}
{{- fail (printf "\n\nknockgate-controller: database.type=sqlite allows exactly one replica, got replicas=%d.\nSQLite is one file on one ReadWriteOnce volume: two controllers would each need it and\nrefuse or corrupt each other's writes. For several replicas set database.type=postgresql\nand database.postgresql.existingSecret (see examples/postgresql.yaml)." $replicas) }}
{{- end }}
{{- if and (eq .Values.database.type "postgresql") (not .Values.database.postgresql.existingSecret) }}
{{- fail "\n\nknockgate-controller: database.type=postgresql needs database.postgresql.existingSecret: the name of a Secret whose key database.postgresql.secretKey holds the postgres:// URL." }}
{{- end }}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) }}
{{- fail "\n\nknockgate-controller: otel.enabled=true needs otel.endpoint (e.g. http://otel-collector.observability:4317)." }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "\n\nknockgate-controller: set podDisruptionBudget.minAvailable or podDisruptionBudget.maxUnavailable, not both." }}
{{- end }}
{{- if and (ne .Values.service.type "NodePort") (ne .Values.service.type "LoadBalancer") .Values.service.nodePort }}
{{- fail "\n\nknockgate-controller: service.nodePort needs service.type NodePort or LoadBalancer." }}
{{- end }}
{{- if and (ne .Values.service.type "LoadBalancer") .Values.service.loadBalancerIP }}
{{- fail "\n\nknockgate-controller: service.loadBalancerIP needs service.type LoadBalancer." }}
{{- end }}
{{- end }}

{{/* The controller's command line. */}}
{{- define "knockgate-controller.args" -}}
- run
- --data-dir={{ .Values.controller.dataDir }}
- --pki-dir={{ .Values.pki.mountPath }}
- --listen={{ include "knockgate-controller.hostPort" (list .Values.controller.bindAddress .Values.controller.port) }}
- --health-listen={{ include "knockgate-controller.hostPort" (list .Values.controller.bindAddress .Values.controller.healthPort) }}
- --agent-cert-lifetime={{ .Values.controller.agentCertLifetime }}
- --log-format={{ .Values.controller.logFormat }}
{{- range .Values.controller.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The pod template shared by the StatefulSet (SQLite) and the Deployment (PostgreSQL). */}}
{{- define "knockgate-controller.podTemplate" -}}
metadata:
  labels:
    {{- include "knockgate-controller.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "knockgate-controller.serviceAccountName" . }}
  # The controller never talks to the Kubernetes API.
  automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
  {{- with .Values.image.pullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: controller
      image: {{ include "knockgate-controller.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        {{- toYaml .Values.controller.command | nindent 8 }}
      args:
        {{- include "knockgate-controller.args" . | nindent 8 }}
      env:
        - name: RUST_LOG
          value: {{ .Values.controller.logLevel | quote }}
        {{- if eq .Values.database.type "postgresql" }}
        - name: KNOCKGATE_DATABASE_URL
          valueFrom:
            secretKeyRef:
              name: {{ .Values.database.postgresql.existingSecret }}
              key: {{ .Values.database.postgresql.secretKey }}
        {{- end }}
        {{- if .Values.otel.enabled }}
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: OTEL_EXPORTER_OTLP_ENDPOINT
          value: {{ .Values.otel.endpoint | quote }}
        - name: OTEL_EXPORTER_OTLP_PROTOCOL
          value: {{ .Values.otel.protocol | quote }}
        - name: OTEL_SERVICE_NAME
          value: {{ .Values.otel.serviceName | default (include "knockgate-controller.fullname" .) | quote }}
        {{- $attrs := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" (printf "service.version=%s" (.Values.image.tag | default .Chart.AppVersion)) }}
        {{- range $k, $v := .Values.otel.resourceAttributes }}
        {{- $attrs = append $attrs (printf "%s=%s" $k (toString $v)) }}
        {{- end }}
        - name: OTEL_RESOURCE_ATTRIBUTES
          value: {{ join "," $attrs | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ .Values.controller.port }}
          protocol: TCP
        - name: health
          containerPort: {{ .Values.controller.healthPort }}
          protocol: TCP
      # Probes use the plain-HTTP health port only: the gRPC port speaks mutual TLS.
      {{- with .Values.probes }}
      {{- if .startup.enabled }}
      startupProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: {{ .startup.periodSeconds }}
        timeoutSeconds: {{ .startup.timeoutSeconds }}
        failureThreshold: {{ .startup.failureThreshold }}
      {{- end }}
      {{- if .liveness.enabled }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: {{ .liveness.periodSeconds }}
        timeoutSeconds: {{ .liveness.timeoutSeconds }}
        failureThreshold: {{ .liveness.failureThreshold }}
      {{- end }}
      {{- if .readiness.enabled }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: health
        periodSeconds: {{ .readiness.periodSeconds }}
        timeoutSeconds: {{ .readiness.timeoutSeconds }}
        failureThreshold: {{ .readiness.failureThreshold }}
      {{- end }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: pki
          mountPath: {{ .Values.pki.mountPath }}
          readOnly: true
        - name: data
          mountPath: {{ .Values.controller.dataDir }}
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: pki
      secret:
        secretName: {{ include "knockgate-controller.pkiSecretName" . }}
        defaultMode: {{ .Values.pki.defaultMode }}
    {{- if ne .Values.database.type "sqlite" }}
    # PostgreSQL holds the state: the data dir only has to exist.
    - name: data
      emptyDir:
        sizeLimit: 16Mi
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- tpl (toYaml .) $ | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- tpl (toYaml .) $ | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
