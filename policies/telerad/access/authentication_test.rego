# Authentication strength (step-up) and sensitive labels.
package telerad.access_test

import data.telerad.access

test_acr_below_facility_requirement_requires_step_up if {
	req := json.patch(radiologist_input, [
		put("/resource/facility", "bay-general"),
		put("/resource/assignment/facility", "bay-general"),
		put("/subject/acr", "1"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == step_up_denied("2", 3600)
}

test_stale_authentication_requires_step_up if {
	req := json.patch(radiologist_input, [put("/subject/auth_time", saturday_noon - 43201)])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == step_up_denied("1", 43200)
}

test_authentication_at_max_age_is_fresh_enough if {
	req := json.patch(radiologist_input, [put("/subject/auth_time", saturday_noon - 43200)])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
}

test_auth_time_in_the_future_beyond_clock_skew_requires_step_up if {
	req := json.patch(radiologist_input, [put("/subject/auth_time", saturday_noon + 61)])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == step_up_denied("1", 43200)

	skewed := json.patch(radiologist_input, [put("/subject/auth_time", saturday_noon + 60)])
	allowed := access.decision with input as skewed
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	allowed.allow == true
}

test_sensitive_label_requires_mfa_even_where_facility_does_not if {
	req := json.patch(radiologist_input, [put("/resource/labels", ["vip"]), put("/subject/acr", "1")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == step_up_denied("2", 43200)
}

test_sensitive_study_on_worklist_gets_short_ttl if {
	req := json.patch(radiologist_input, [put("/resource/labels", ["behavioral_health", "contrast", "vip"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [
			reason("assigned_on_worklist", "the study is on the radiologist's worklist"),
			reason("privileged", "privileged at facility st-olaf"),
			reason("sensitive_study", `sensitive labels ["behavioral_health", "vip"]: short link ttl and acr >= 2`),
		],
		"obligations": granted(300, ["view"], false),
	}
}

test_sensitive_study_is_not_covered_by_group_coverage if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/resource/labels", ["restricted"]),
		put("/context/now", monday_noon),
		put("/subject/auth_time", monday_noon - 60),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("sensitive_requires_assignment", `labels ["restricted"] require explicit worklist assignment`)])
}

test_step_up_is_not_offered_when_other_requirements_fail if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/resource/labels", ["restricted"]),
		put("/subject/acr", "1"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		reason("not_assigned", "the study is not on the radiologist's worklist and no group coverage applies now"),
		reason("sensitive_requires_assignment", `labels ["restricted"] require explicit worklist assignment`),
		reason("step_up_required", "authentication at acr >= 2 within the last 43200 seconds is required"),
	])
	not "step_up" in object.keys(d.obligations)
}

test_higher_acr_than_required_is_accepted if {
	req := json.patch(radiologist_input, [
		put("/subject/acr", "3"),
		put("/resource/facility", "bay-general"),
		put("/resource/assignment/facility", "bay-general"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
	d.obligations == granted(600, ["view"], true)
}
