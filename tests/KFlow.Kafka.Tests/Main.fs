// The test root of KFlow.Kafka: every test file's `tests`, run by Expecto from the command line.
// The workflow tests share the embedded cluster's CPU, so their list is sequenced.
module KFlow.Kafka.Tests.Main

open Expecto

[<Tests>]
let all =
    testList "Kafka" [
        BackoffTests.tests
        ErrorPolicyTests.tests
        RestartScheduleTests.tests
        DeadLetterWriterTests.tests
        BackpressureTests.tests
        CommitPlanTests.tests
        OpenOffsetsTests.tests
        KeyCacheTests.tests
        FailureHandlingTests.tests
        AsyncCallsTests.tests
        SinkLanesTests.tests
        WorkflowOptionsTests.tests
        StageTimingTests.tests
        PipeCoreTests.tests
        WorkflowTests.tests
        ConcurrencyGateTests.tests
        SupervisionTests.tests
        RuntimeDocTests.tests
        KafkaSinkTests.tests
        FileSinkTests.tests
        RetransmitTests.tests
        CrashTests.tests
        ExactlyOnceTests.tests
        FailureHandlingDocTests.tests
        ReadmeTests.tests
        FSharpGuideTests.tests
        WorkflowsTests.tests
    ]

[<EntryPoint>]
let main argv = runTestsWithCLIArgs [] argv all
