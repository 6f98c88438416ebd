# Requirement checks for telerad.access. Each requirement is a positive rule,
# combined in grants.rego; denials.rego states the failures with negation, so
# that an undefined value (missing input or data) denies instead of passing.
package telerad.access

_sensitive_labels := {"vip", "restricted", "behavioral_health"}

# acr level demanded for studies with a sensitive label (2 = MFA)
_sensitive_min_acr := 2

_break_glass_min_length := 20

# tolerated clock skew between the identity provider and the broker
_clock_skew_seconds := 60

# ---------------------------------------------------------------- roles

# The role a request is evaluated under. Holding the auditor role excludes
# image access altogether (separation of duties); radiologist beats
# referring_physician when a subject holds both.
_role := "auditor" if {
	_input.action == "read_audit"
	"auditor" in _roles
} else := "radiologist" if {
	_image_action
	not "auditor" in _roles
	"radiologist" in _roles
} else := "referring_physician" if {
	_image_action
	not "auditor" in _roles
	"referring_physician" in _roles
} else := "consent_registry" if {
	_input.action == "record_consent"
	"consent_registry" in _roles
}

# ----------------------------------------------------------- operations

# operations a role may be granted for the action (download also needs the
# radiologist's download flag)
_permitted_ops contains "view" if {
	_role
	_role != "consent_registry"
}

# a hospital's consent registry records consent (and reads back what it recorded)
_permitted_ops contains op if {
	_role == "consent_registry"
	some op in {"record", "view"}
}

_permitted_ops contains "download" if {
	_role == "radiologist"
	_input.action in {"issue_link", "redeem"}
}

_download_allowed if _radiologist.download == true

_download_ok if not "download" in _requested_ops

_download_ok if _download_allowed

_operations_granted if {
	count(_requested_ops) > 0
	_download_ok
	every op in _requested_ops {
		op in _permitted_ops
	}
}

# ------------------------------------------------------ facility, settings

_facility := data.telerad.facilities[_input.resource.facility]

_facility_valid if {
	is_string(_facility.jurisdiction)
	regex.match(`^[0-9]+$`, _facility.required_acr)
	is_number(_facility.max_auth_age_seconds)
	is_boolean(_facility.accepts_credentialing_by_proxy)
}

_ttl_settings := data.telerad.settings.link_ttl_seconds

_settings_valid if {
	every key in {"default", "sensitive", "break_glass"} {
		is_number(_ttl_settings[key])
		_ttl_settings[key] > 0
	}
}

# ---------------------------------------------------------- sensitivity

_sensitive_labels_present contains label if {
	some label in _input.resource.labels
	label in _sensitive_labels
}

_sensitive if {
	_image_action
	count(_sensitive_labels_present) > 0
}

# --------------------------------------------------- authentication strength

default _sensitive_acr_floor := 0

_sensitive_acr_floor := _sensitive_min_acr if _sensitive

_required_acr := max({to_number(_facility.required_acr), _sensitive_acr_floor}) if _facility_valid

_acr_ok if to_number(_input.subject.acr) >= _required_acr

_auth_fresh if {
	age := _input.context.now - _input.subject.auth_time
	age <= _facility.max_auth_age_seconds
	age >= 0 - _clock_skew_seconds
}

_strongly_authenticated if {
	_acr_ok
	_auth_fresh
}

_step_up := {
	"acr": format_int(_required_acr, 10),
	"max_age": _facility.max_auth_age_seconds,
}

# step-up is offered only when it is the one thing between the caller and an allow
_step_up_only if {
	{denial.code | some denial in _denials} == {"step_up_required"}
	_granted_except_authentication
}

# -------------------------------------------------------------- consent

_consent := _input.context.consent.external_reading

_consent_recorded if _consent in {"permit", "deny"}

# ---------------------------------------------------------- break-glass

_break_glass_requested if _input.context.break_glass != null

_break_glass_justified if {
	justification := _input.context.break_glass.justification
	is_string(justification)
	count(trim_space(justification)) >= _break_glass_min_length
}

default _break_glass := false

# break-glass is in effect whenever a radiologist supplies a valid justification
_break_glass if {
	_role == "radiologist"
	_break_glass_requested
	_break_glass_justified
}

_break_glass_acceptable if not _break_glass_requested

_break_glass_acceptable if _break_glass

# ------------------------------------------------------ referring physician

_own_patient if _input.resource.referring_physician == _input.subject.id

# ------------------------------------------------------------ radiologist

_radiologist := data.telerad.radiologists[_input.subject.id]

_radiologist_valid if {
	is_array(_radiologist.licenses)
	is_array(_radiologist.privileges)
	is_array(_radiologist.proxy_credentialed)
	is_boolean(_radiologist.download)
}

# credentialing / privileging
_privileged if _input.resource.facility in _radiologist.privileges

_proxy_credentialed if {
	_input.resource.facility in _radiologist.proxy_credentialed
	_facility.accepts_credentialing_by_proxy == true
}

_credentialed if _privileged

_credentialed if _proxy_credentialed

# licensure
_licensed if _facility.jurisdiction in _radiologist.licenses

# assignment: explicit (the RIS's worklist, input.resource.assignment) or group coverage at
# context.now. The assignment counts only while the study is assigned (not unassigned, not
# closed) and only for the facility the PACS says the study belongs to.
_on_worklist if {
	_input.resource.assignment.status == "assigned"
	_input.resource.assignment.facility == _input.resource.facility
	_input.subject.id in _input.resource.assignment.readers
}

# weekday (0 = Sunday ... 6 = Saturday) and hour of context.now, both UTC;
# 1970-01-01 was a Thursday (weekday 4)
_days_since_epoch := floor(_input.context.now / 86400)

_weekday := (_days_since_epoch + 4) % 7

_hour := floor((_input.context.now - (_days_since_epoch * 86400)) / 3600)

# the group must agree between the directory (data) and the token (input)
_group := _radiologist.group if _radiologist.group == _input.subject.group

_group_covers if {
	some window in data.telerad.coverage[_group]
	window.facility == _input.resource.facility
	_weekday in window.weekdays
	window.start_hour <= _hour
	_hour < window.end_hour
}

_assignment_ok if _break_glass

_assignment_ok if _on_worklist

_assignment_ok if {
	_group_covers
	not _sensitive
}

# ------------------------------------------------------ consent registry

# A consent registry speaks only for the facilities it is privileged at.
_registry_facility_ok if _input.resource.facility in _input.subject.privileges
