# Input normalisation and validation for telerad.access.
# Every problem found here becomes an input_invalid reason (see denials.rego).
package telerad.access

_image_actions := {"issue_link", "redeem", "search"}

_known_actions := _image_actions | {"read_audit", "record_consent"}

_known_operations := {"view", "download", "record"}

# input with a fallback, so that a request without any input still yields a decision
default _input := {}

_input := input if is_object(input)

_image_action if _input.action in _image_actions

# Fields required for every action: dotted path -> JSON type (strings must be non-empty).
_common_fields := {
	"action": "string",
	"operations": "array",
	"subject.id": "string",
	"subject.issuer": "string",
	"subject.roles": "array",
	"subject.acr": "string",
	"subject.amr": "array",
	"subject.auth_time": "number",
	"resource.facility": "string",
	"context.now": "number",
	"context.client_ip": "string",
}

# Additional fields required for actions that touch images.
# context.consent is checked on its own (consent_missing).
_image_fields := {
	"resource.study_uid": "string",
	"resource.labels": "array",
	"resource.patient_ref": "string",
}

# Nullable fields: absent is treated like null, which never grants anything.
_nullable_fields := {
	"subject.group": {"string", "null"},
	"resource.referring_physician": {"string", "null"},
	"resource.assignment": {"object", "null"},
	"context.break_glass": {"object", "null"},
}

_string_arrays := {"operations", "subject.roles", "subject.amr", "resource.labels"}

_required_fields := _common_fields if not _image_action

_required_fields := object.union(_common_fields, _image_fields) if _image_action

_invalid_input contains sprintf("input.%s is missing, empty or not of type %s", [name, type]) if {
	some name, type in _required_fields
	not _valid_value(object.get(_input, split(name, "."), null), type)
}

_invalid_input contains sprintf("input.%s must be one of %v, or absent", [name, sort(types)]) if {
	some name, types in _nullable_fields
	not type_name(object.get(_input, split(name, "."), null)) in types
}

_invalid_input contains sprintf("input.%s must contain only strings", [name]) if {
	some name in _string_arrays
	some element in object.get(_input, split(name, "."), [])
	not is_string(element)
}

_invalid_input contains "input.operations must not be empty" if _input.operations == []

_invalid_input contains "input.subject.acr must be a numeric level such as \"2\"" if {
	is_string(_input.subject.acr)
	_input.subject.acr != ""
	not regex.match(`^[0-9]+$`, _input.subject.acr)
}

_valid_value(value, type) if {
	type_name(value) == type
	value != ""
}

default _requested_ops := set()

_requested_ops := {op | some op in _input.operations} if is_array(_input.operations)

default _roles := set()

_roles := {role | some role in _input.subject.roles} if is_array(_input.subject.roles)
