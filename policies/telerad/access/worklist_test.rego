# Worklist assignments from the RIS: the broker puts the study's assignment, as the RIS's events
# on the worklist topic left it, into input.resource.assignment; only an assigned study of the
# PACS's facility counts as on the reader's worklist.
package telerad.access_test

import data.telerad.access

not_assigned := denied([reason(
	"not_assigned",
	"the study is not on the radiologist's worklist and no group coverage applies now",
)])

test_unassigned_study_denies if {
	unassigned := object.union(assignment_1, {"status": "unassigned", "readers": []})
	d := access.decision with input as json.patch(radiologist_input, [put("/resource/assignment", unassigned)])
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == not_assigned
}

test_closed_study_denies_even_with_readers_left_in if {
	closed := object.union(assignment_1, {"status": "closed"})
	d := access.decision with input as json.patch(radiologist_input, [put("/resource/assignment", closed)])
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == not_assigned
}

test_other_reader_denies if {
	other := object.union(assignment_1, {"readers": ["npi:1000000002"]})
	d := access.decision with input as json.patch(radiologist_input, [put("/resource/assignment", other)])
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == not_assigned
}

test_assignment_for_another_facility_denies if {
	elsewhere := object.union(assignment_1, {"facility": "mercy-ny"})
	d := access.decision with input as json.patch(radiologist_input, [put("/resource/assignment", elsewhere)])
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == not_assigned
}

test_null_assignment_denies if {
	d := access.decision with input as json.patch(radiologist_input, [put("/resource/assignment", null)])
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == not_assigned
}

test_closed_study_still_open_to_group_coverage_when_not_sensitive if {
	closed := object.union(assignment_1, {"status": "closed", "readers": []})
	weekday_morning := saturday_noon - ((5 * 86400) + 7200) # Monday 10:00 UTC
	req := json.patch(radiologist_input, [
		put("/resource/assignment", closed),
		put("/context/now", weekday_morning),
		put("/subject/auth_time", weekday_morning - 600),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
	not "assigned_on_worklist" in {r.code | some r in d.reasons}
}
