# Role grants (every requirement positively satisfied), the reasons reported
# for an allow, and the values behind the obligations.
package telerad.access

_granted if {
	_granted_except_authentication
	_strongly_authenticated
}

_granted_except_authentication if {
	_role == "radiologist"
	_common_requirements
	_radiologist_valid
	_credentialed
	_licensed
	_assignment_ok
	_consent == "permit"
	_break_glass_acceptable
}

_granted_except_authentication if {
	_role == "referring_physician"
	_common_requirements
	_own_patient
	_consent == "permit"
	not _break_glass_requested
}

_granted_except_authentication if {
	_role == "auditor"
	_common_requirements
	not _break_glass_requested
}

_granted_except_authentication if {
	_role == "consent_registry"
	_common_requirements
	_registry_facility_ok
	not _break_glass_requested
}

_common_requirements if {
	count(_invalid_input) == 0
	_facility_valid
	_settings_valid
	_operations_granted
}

_allow_reasons contains _reason("assigned_on_worklist", "the study is on the radiologist's worklist") if {
	_role == "radiologist"
	_on_worklist
}

_allow_reasons contains _reason("group_coverage", message) if {
	_role == "radiologist"
	_group_covers
	not _sensitive
	message := sprintf("reading group %s covers facility %s now", [_group, _input.resource.facility])
}

_allow_reasons contains _reason("break_glass", "emergency break-glass access; a security alert is raised") if {
	_break_glass
}

_allow_reasons contains _reason("privileged", message) if {
	_role == "radiologist"
	_privileged
	message := sprintf("privileged at facility %s", [_input.resource.facility])
}

_allow_reasons contains _reason("proxy_credentialed", message) if {
	_role == "radiologist"
	not _privileged
	_proxy_credentialed
	message := sprintf("credentialed by proxy at facility %s", [_input.resource.facility])
}

_allow_reasons contains _reason("referring_physician_own_patient", message) if {
	_role == "referring_physician"
	message := "the subject is the referring physician of this study"
}

_allow_reasons contains _reason("auditor_read_audit", "auditors may read audit records") if {
	_role == "auditor"
}

_allow_reasons contains _reason("consent_registry", message) if {
	_role == "consent_registry"
	message := sprintf("the consent registry of facility %s records its patients' consent", [_input.resource.facility])
}

_allow_reasons contains _reason("sensitive_study", message) if {
	_sensitive
	message := sprintf(
		"sensitive labels %v: short link ttl and acr >= %d",
		[sort(_sensitive_labels_present), _sensitive_min_acr],
	)
}

_ttl_candidates contains _ttl_settings["default"]

_ttl_candidates contains _ttl_settings.sensitive if _sensitive

_ttl_candidates contains _ttl_settings.break_glass if _break_glass

_link_ttl := min(_ttl_candidates)

# bearer_only_redeem: the link may be redeemed by presenting the link alone.
# Only plain view links to non-sensitive studies outside break-glass qualify;
# all other links must be redeemed with the subject's session (action redeem).
default _bearer_only_redeem := false

_bearer_only_redeem if {
	_input.action == "issue_link"
	_requested_ops == {"view"}
	not _sensitive
	not _break_glass
}

# redeem_window_seconds: an allowed redeem may be reused for this long by the
# same holder of the same link (data.telerad.settings.redeem_window_seconds,
# 30 when not set). Only a non-negative number counts; anything else is 0.
default _redeem_window := 0

_redeem_window := seconds if {
	_input.action == "redeem"
	seconds := object.get(data.telerad.settings, "redeem_window_seconds", 30)
	is_number(seconds)
	seconds >= 0
}

# rate_limit: a lower per-person rate limit for this action, for the subject's
# roles (data.telerad.settings.rate_limits[role][action] = {"burst", "per_minute"};
# with several roles, the lowest of each field). The broker only ever lowers its
# own limits with it; absent unless the data names one.
_rate_limits contains limit if {
	some role in _roles
	limits := object.get(data.telerad.settings, "rate_limits", {})
	limit := limits[role][_input.action]
	is_object(limit)
}

_rate_limit[field] := min(values) if {
	some field in {"burst", "per_minute"}
	values := [value | some limit in _rate_limits; value := limit[field]; is_number(value); value >= 0]
	count(values) > 0
}

default _rate_limit_obligation := {}

_rate_limit_obligation := {"rate_limit": _rate_limit} if count(_rate_limit) > 0

# unfingerprinted: what the proxy does with an instance or frame that has no
# fingerprint (never recorded by the integrity watcher): "serve" it unchecked
# or "refuse" it. data.telerad.settings.unfingerprinted; anything but "serve"
# (missing included) is "refuse".
default _unfingerprinted := "refuse"

_unfingerprinted := "serve" if object.get(data.telerad.settings, "unfingerprinted", "refuse") == "serve"
