# Every deny reason of telerad.access, in one place. Each is the negation of a
# positive requirement (requirements.rego), so undefined values deny.
# Negate rule references, never a call on a possibly undefined value:
# `not f(x)` and `not x in s` are undefined, not true, when x is undefined
# (OPA rewrites the argument into a separate expression; see OPA issue 1877).
package telerad.access

_denials contains _reason("input_invalid", message) if some message in _invalid_input

_denials contains _reason("unknown_action", message) if {
	action := _input.action
	is_string(action)
	action != ""
	not action in _known_actions
	message := sprintf("action %q is not one of %v", [action, sort(_known_actions)])
}

_denials contains _reason("unknown_operation", message) if {
	some op in _requested_ops
	not op in _known_operations
	message := sprintf("operation %v is not one of %v", [op, sort(_known_operations)])
}

_denials contains _reason("role_not_permitted", _role_denied_message) if {
	_input.action in _known_actions
	not _role
}

_denials contains _reason("operation_not_permitted", message) if {
	_role
	some op in _requested_ops
	op in _known_operations
	not op in _permitted_ops
	message := sprintf("operation %s is not permitted for role %s with action %s", [op, _role, _input.action])
}

_denials contains _reason("registry_facility_not_permitted", message) if {
	_role == "consent_registry"
	not _registry_facility_ok
	message := sprintf("the consent registry is not privileged at facility %v", [_input.resource.facility])
}

_denials contains _reason("download_not_permitted", "the radiologist is not permitted to download studies") if {
	"download" in _requested_ops
	"download" in _permitted_ops
	_radiologist_valid
	not _download_allowed
}

_denials contains _reason("unknown_facility", sprintf("facility %s is not known", [facility])) if {
	facility := _input.resource.facility
	is_string(facility)
	facility != ""
	not _facility
}

_denials contains _reason("policy_data_invalid", message) if {
	_facility
	not _facility_valid
	message := sprintf("data.telerad.facilities[%q] is incomplete", [_input.resource.facility])
}

_denials contains _reason("policy_data_invalid", message) if {
	not _settings_valid
	message := "data.telerad.settings.link_ttl_seconds needs positive default, sensitive and break_glass values"
}

_denials contains _reason("step_up_required", message) if {
	_role
	_facility_valid
	not _strongly_authenticated
	message := sprintf(
		"authentication at acr >= %s within the last %v seconds is required",
		[_step_up.acr, _step_up.max_age],
	)
}

_denials contains _reason("consent_denied", "the patient has opted out of external reading") if {
	_image_action
	_consent == "deny"
}

_denials contains _reason("consent_missing", "context.consent.external_reading must be \"permit\" or \"deny\"") if {
	_image_action
	not _consent_recorded
}

_denials contains _reason("break_glass_justification_invalid", message) if {
	_role == "radiologist"
	_break_glass_requested
	not _break_glass_justified
	message := sprintf("break-glass needs a justification of at least %d characters", [_break_glass_min_length])
}

_denials contains _reason("break_glass_not_permitted", "break-glass is available to radiologists only") if {
	_break_glass_requested
	_role != "radiologist"
}

_denials contains _reason("not_own_patient", "referring physicians may only view their own patients' studies") if {
	_role == "referring_physician"
	not _own_patient
}

_denials contains _reason("unknown_radiologist", sprintf("%s is not a known radiologist", [_input.subject.id])) if {
	_role == "radiologist"
	not _radiologist
}

_denials contains _reason("policy_data_invalid", message) if {
	_role == "radiologist"
	_radiologist
	not _radiologist_valid
	message := sprintf("data.telerad.radiologists[%q] is incomplete", [_input.subject.id])
}

_denials contains _reason("not_privileged", _not_privileged_message) if {
	_role == "radiologist"
	_radiologist_valid
	_facility_valid
	not _credentialed
}

_denials contains _reason("not_licensed", message) if {
	_role == "radiologist"
	_radiologist_valid
	_facility_valid
	not _licensed
	message := sprintf(
		"no license for jurisdiction %s of facility %s",
		[_facility.jurisdiction, _input.resource.facility],
	)
}

_denials contains _reason("not_assigned", message) if {
	_role == "radiologist"
	_radiologist_valid
	not _break_glass
	not _on_worklist
	not _group_covers
	message := "the study is not on the radiologist's worklist and no group coverage applies now"
}

_denials contains _reason("sensitive_requires_assignment", message) if {
	_role == "radiologist"
	_radiologist_valid
	_sensitive
	not _break_glass
	not _on_worklist
	message := sprintf("labels %v require explicit worklist assignment", [sort(_sensitive_labels_present)])
}

_role_denied_message := "the auditor role grants access to audit records only, never to images" if {
	_image_action
	"auditor" in _roles
} else := sprintf("roles %v do not permit action %s", [sort(_roles), _input.action])

_not_privileged_message := message if {
	_input.resource.facility in _radiologist.proxy_credentialed
	message := sprintf(
		"proxy credentialing is recorded but facility %s does not accept credentialing by proxy",
		[_input.resource.facility],
	)
} else := sprintf("no privileges or accepted proxy credentialing at facility %s", [_input.resource.facility])
