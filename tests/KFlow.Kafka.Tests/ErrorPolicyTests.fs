// Tests for src/KFlow.Kafka/ErrorPolicy.fs: per-stage resolution, escalation, the retry delays a
// policy implies (pure, no time), validation naming the setting.
module KFlow.Kafka.Tests.ErrorPolicyTests

open System
open Expecto
open KFlow.Kafka

let private ms (n: float) = TimeSpan.FromMilliseconds n

let private fast = {
    First = ms 10.
    Max = ms 40.
    Jitter = 0.
}

let private name (p: ErrorPolicy) = ErrorPolicy.describe p

let tests =
    testList "ErrorPolicy" [
        test "the default is restart and replay with the default backoff" {
            Expect.equal
                (name ErrorPolicy.defaults)
                (name (RestartAndReplay Backoff.defaults))
                "restart and replay"

            Expect.equal
                (name (ErrorPolicy.ofStage "any" ErrorPolicy.policies))
                (name ErrorPolicy.defaults)
                "for every stage"
        }

        test "a stage override wins over the workflow's policy, other stages keep it" {
            let policies =
                {
                    ErrorPolicy.policies with
                        Default = Halt
                }
                |> ErrorPolicy.forStage "deserialize" (DeadLetter "orders-dlq")

            Expect.equal
                (name (ErrorPolicy.ofStage "deserialize" policies))
                "dead-letter to 'orders-dlq'"
                "override"

            Expect.equal (name (ErrorPolicy.ofStage "map" policies)) "halt" "default"
        }

        test "retry in place gives the backoff's delays for its budget, then nothing (escalate)" {
            let policy = RetryInPlace(3, fast, DeadLetter "dlq")

            Expect.equal
                [ for r in 1..4 -> ErrorPolicy.retryDelay 0. r policy ]
                [ ValueSome(ms 10.); ValueSome(ms 20.); ValueSome(ms 40.); ValueNone ]
                "three retries growing and capped, then escalation"

            Expect.equal (ErrorPolicy.retries policy) 3 "three retries"

            Expect.equal
                (name (ErrorPolicy.terminal policy))
                "dead-letter to 'dlq'"
                "escalates to dead-letter"
        }

        test "nested retries run one layer after the other, each backoff counting from its start" {
            let policy =
                RetryInPlace(
                    2,
                    fast,
                    RetryInPlace(
                        2,
                        {
                            fast with
                                First = ms 100.
                                Max = ms 100.
                        },
                        Halt
                    )
                )

            Expect.equal
                [ for r in 1..5 -> ErrorPolicy.retryDelay 0. r policy ]
                [
                    ValueSome(ms 10.)
                    ValueSome(ms 20.)
                    ValueSome(ms 100.)
                    ValueSome(ms 100.)
                    ValueNone
                ]
                "2 + 2 retries"

            Expect.equal (ErrorPolicy.retries policy) 4 "budgets add up"
            Expect.equal (name (ErrorPolicy.terminal policy)) "halt" "then halt"
        }

        test "policies without retries in place have no retry delay" {
            for p in [ ErrorPolicy.defaults; DeadLetter "dlq"; Halt; RetryInPlace(0, fast, Halt) ] do
                Expect.equal (ErrorPolicy.retryDelay 0. 1 p) ValueNone (name p)
        }

        test
            "a restart uses the stage's own restart backoff, or the workflow's when the stage does not restart" {
            let own = { fast with First = ms 5. }

            Expect.equal
                (ErrorPolicy.restartBackoff fast (RetryInPlace(1, fast, RestartAndReplay own)))
                own
                "own"

            Expect.equal (ErrorPolicy.restartBackoff fast (DeadLetter "dlq")) fast "fallback"
        }

        test "a sink's policy gets the default retry budget first unless it retries in place itself" {
            Expect.equal
                (name (ErrorPolicy.forSink 3 fast Halt))
                (name (RetryInPlace(3, fast, Halt)))
                "3 retries, then halt"

            let own = RetryInPlace(1, fast, DeadLetter "dlq")
            Expect.equal (name (ErrorPolicy.forSink 3 fast own)) (name own) "its own retries are kept"
            Expect.equal (name (ErrorPolicy.forSink 0 fast Halt)) "halt" "0 disables them"
        }

        test "dead-lettering is seen through retries" {
            Expect.isTrue
                (ErrorPolicy.deadLetters (RetryInPlace(2, fast, DeadLetter "dlq")))
                "escalates to it"

            Expect.isFalse (ErrorPolicy.deadLetters ErrorPolicy.defaults) "the default does not"
        }

        test "bad policies are refused with the setting named" {
            let refused (policy: ErrorPolicy) (part: string) =
                Expect.throwsC (fun () -> ErrorPolicy.validate "OnFailure" policy) (fun e ->
                    Expect.isTrue (e :? ArgumentException) "an ArgumentException"
                    Expect.stringContains e.Message part $"names {part}")

            refused (DeadLetter " ") "DeadLetter needs a topic"
            refused (RetryInPlace(-1, fast, Halt)) "retries ≥ 0"
            refused (RetryInPlace(1, { fast with Jitter = 2. }, Halt)) "OnFailure.Jitter"
            refused (RetryInPlace(1, fast, RestartAndReplay { fast with Max = ms 1. })) "OnFailure.Max"
        }

        test "a bad per-stage policy is refused by the options, naming the stage" {
            let options = {
                WorkflowOptions.create "w" "localhost:9092" "g" [ "t" ] with
                    OnStageFailure = Map [ "parse", DeadLetter "" ]
            }

            Expect.throwsC (fun () -> WorkflowOptions.validate options |> ignore) (fun e ->
                Expect.stringContains e.Message "OnStageFailure[parse]" "names the stage")
        }
    ]
