"""The attributes that DICOM PS3.15 Annex E, Table E.1-1 (Basic Application Level Confidentiality Profile)
acts on, with the profile's action code, as used by `segserve.dicom.deid`.

Action codes (PS3.15 E.3.1): D replace with a dummy value, Z replace with a zero-length value, X remove,
U replace a UID with one derived consistently, and combinations (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) whose choice
depends on the attribute's type in the IOD. `resolve()` picks one per code without IOD tables:

    X/Z       -> Z   keeps Type 2 attributes present (an empty value is legal for every one listed)
    any .../D -> D   a dummy is legal where the attribute is Type 1 (e.g. Enhanced Equipment)
    X/Z/U*    -> K   keep the sequence; its items are processed with this same table, so the UIDs inside
                     (Referenced SOP Instance UID, ...) are replaced like everywhere else

Only attributes commonly found in CT and MR objects and their references are listed here; anything not
listed is kept, except private attributes and curve / overlay groups, which `segserve.dicom.deid` removes
whole. Beyond the table (stricter than the profile): Instance Creation Date/Time are removed as well, so
that no date of the examination remains.
"""

from __future__ import annotations

from typing import Literal

Action = Literal["X", "Z", "D", "U", "K"]

BASIC_PROFILE: dict[str, str] = {
    # identifying the patient
    "PatientName": "Z",
    "PatientID": "Z",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientSex": "Z",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientMotherBirthName": "X",
    "PatientBirthName": "X",
    "PatientComments": "X",
    "PatientReligiousPreference": "X",
    "PatientState": "X",
    "PatientTransportArrangements": "X",
    "PatientSexNeutered": "X/Z",
    "PatientInsurancePlanCodeSequence": "X",
    "PatientPrimaryLanguageCodeSequence": "X",
    "OtherPatientIDs": "X",
    "OtherPatientNames": "X",
    "OtherPatientIDsSequence": "X",
    "IssuerOfPatientID": "X",
    "MedicalRecordLocator": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "MedicalAlerts": "X",
    "Allergies": "X",
    "SmokingStatus": "X",
    "PregnancyStatus": "X",
    "AdditionalPatientHistory": "X",
    "SpecialNeeds": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedPatientAliasSequence": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    # the visit, the order and the study
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "StudyDescription": "X",
    "StudyComments": "X",
    "StudyIDIssuer": "X",
    "AdmissionID": "X",
    "IssuerOfAdmissionID": "X",
    "AdmittingDiagnosesDescription": "X",
    "CurrentPatientLocation": "X",
    "ServiceEpisodeID": "X",
    "ServiceEpisodeDescription": "X",
    "VisitComments": "X",
    "ReasonForStudy": "X",
    "ReasonForTheRequestedProcedure": "X",
    "RequestedProcedureDescription": "X/Z",
    "RequestedProcedureID": "X",
    "RequestedProcedureComments": "X",
    "RequestAttributesSequence": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
    "ImagingServiceRequestComments": "X",
    "OrderEnteredBy": "X",
    "OrderEntererLocation": "X",
    "OrderCallbackPhoneNumber": "X",
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "ReferencedStudySequence": "X/Z",
    "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X",
    "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X",
    "CommentsOnThePerformedProcedureStep": "X",
    "PerformedLocation": "X",
    "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepLocation": "X",
    "ScheduledProcedureStepStartDate": "X",
    "ScheduledProcedureStepStartTime": "X",
    "ScheduledProcedureStepEndDate": "X",
    "ScheduledProcedureStepEndTime": "X",
    "ScheduledStationName": "X",
    "ScheduledStationAETitle": "X",
    "ScheduledPerformingPhysicianName": "X",
    # the series, the acquisition and the equipment
    "SeriesDate": "X",
    "SeriesTime": "X",
    "AcquisitionDate": "X/Z",
    "AcquisitionTime": "X/Z",
    "AcquisitionDateTime": "X/Z/D",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "SeriesDescription": "X",
    "ProtocolName": "X/D",
    "AcquisitionComments": "X",
    "AcquisitionDeviceProcessingDescription": "X/D",
    "ContrastBolusAgent": "Z/D",
    "DerivationDescription": "X",
    "ImageComments": "X",
    "FrameComments": "X",
    "OperatorsName": "X/Z/D",
    "OperatorIdentificationSequence": "X",
    "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "InstitutionName": "X/Z/D",
    "InstitutionAddress": "X",
    "InstitutionCodeSequence": "X/Z/D",
    "InstitutionalDepartmentName": "X",
    "StationName": "X/Z/D",
    "DeviceSerialNumber": "X/Z/D",
    "DetectorID": "X/D",
    "GantryID": "X/D",
    "GeneratorID": "X/D",
    "PlateID": "X/D",
    "CassetteID": "X/D",
    "ContentCreatorName": "Z",
    "AuthorObserverSequence": "X",
    "ParticipantSequence": "X",
    "PersonName": "D",
    "PersonAddress": "X",
    "PersonTelephoneNumbers": "X",
    "VerifyingObserverName": "D",
    "VerifyingOrganization": "X",
    "ReviewerName": "X/Z",
    "TextComments": "X",
    "TimezoneOffsetFromUTC": "X",
    "ModifiedAttributesSequence": "X",
    "OriginalAttributesSequence": "X",
    "DigitalSignaturesSequence": "X",
    "ReferencedDigitalSignatureSequence": "X",
    "ReferencedSOPInstanceMACSequence": "X",
    "IconImageSequence": "X",
    "DataSetTrailingPadding": "X",
    # stricter than the profile: no date of the examination remains
    "InstanceCreationDate": "X",
    "InstanceCreationTime": "X",
    # references: keep, and replace the UIDs inside
    "ReferencedImageSequence": "X/Z/U*",
    "SourceImageSequence": "X/Z/U*",
    # UIDs
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U",
    "ReferencedSOPInstanceUID": "U",
    "ReferencedFrameOfReferenceUID": "U",
    "RelatedFrameOfReferenceUID": "U",
    "InstanceCreatorUID": "U",
    "IrradiationEventUID": "U",
    "ConcatenationUID": "U",
    "DimensionOrganizationUID": "U",
    "DeviceUID": "U",
    "StorageMediaFileSetUID": "U",
    "TransactionUID": "U",
    "FiducialUID": "U",
    "UID": "U",
}


def resolve(code: str) -> Action:
    """One action for a Table E.1-1 code (see the module docstring)."""
    if code in ("X", "Z", "D", "U"):
        return code  # type: ignore[return-value]
    if code == "X/Z/U*":
        return "K"
    if code.endswith("/D"):
        return "D"
    if code == "X/Z":
        return "Z"
    raise ValueError(f"unknown Table E.1-1 action code {code!r}")
