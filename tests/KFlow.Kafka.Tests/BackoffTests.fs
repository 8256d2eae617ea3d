// Tests for src/KFlow.Kafka/Backoff.fs: the restart delays double from First and stop at Max.
module KFlow.Kafka.Tests.BackoffTests

open System
open Expecto
open KFlow.Kafka

let private ms (n: float) = TimeSpan.FromMilliseconds n

let tests =
    testList "Backoff" [
        test "delays start at First and double up to Max" {
            let backoff = { First = ms 100.; Max = ms 1000. }
            let delays = [ for attempt in 1..6 -> Backoff.delay attempt backoff ]
            Expect.equal delays [ ms 100.; ms 200.; ms 400.; ms 800.; ms 1000.; ms 1000. ] "doubling, capped"
        }

        test "a huge attempt number stays at Max" {
            Expect.equal (Backoff.delay Int32.MaxValue Backoff.defaults) Backoff.defaults.Max "capped"
        }

        test "a non-positive First or a Max below First is refused, naming the setting" {
            Expect.throwsC
                (fun () -> Backoff.validate "OnFailure" { First = TimeSpan.Zero; Max = ms 1. } |> ignore)
                (fun e -> Expect.stringContains e.Message "OnFailure.First" "names First")

            Expect.throwsC
                (fun () -> Backoff.validate "OnFailure" { First = ms 10.; Max = ms 1. } |> ignore)
                (fun e -> Expect.stringContains e.Message "OnFailure.Max" "names Max")
        }
    ]
